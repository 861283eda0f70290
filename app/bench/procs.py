"""Processes the benchmark starts and watches: workers, the ceiling's hops, the broker's JVM.

Every child gets ``PR_SET_PDEATHSIG`` (SIGKILL when the bench dies, even by SIGKILL) and is
tracked by a :class:`Reaper`, which ends it on normal exit, on an error and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.bench.stats import cpu_ticks, vm_rss_bytes

ROOT = Path(__file__).resolve().parent.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """Return the CPU seconds (user + system, all threads) a process has used, or None if gone."""
    try:
        return cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes(pid: int) -> int | None:
    """Return a process's resident set size in bytes, or None if gone."""
    try:
        return vm_rss_bytes(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


def total_cpu(pids: Sequence[int]) -> float | None:
    """Return the summed CPU seconds of ``pids`` (None when none can be read)."""
    values = [v for v in (cpu_seconds(p) for p in pids) if v is not None]
    return sum(values) if values else None


def find_broker_pid(port: int) -> int | None:
    """Find the local Kafka JVM whose server.properties listens on ``port`` (None when not found)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" not in args:
            continue
        props = [a.decode(errors="replace") for a in args if a.endswith(b".properties")]
        for prop in props[-1:]:
            try:
                text = Path(prop).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("listeners=") and f":{port}," in line + ",":
                    return int(entry.name)
    return None


def _pdeathsig() -> Callable[[], None]:
    """Return a preexec_fn that makes the child die with its parent (Linux; a no-op elsewhere)."""
    parent = os.getpid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - not Linux
        return lambda: None

    def preexec() -> None:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


@dataclass
class Reaper:
    """Every child process of the run; :meth:`close` ends them all (SIGTERM, then SIGKILL)."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, cmd: Sequence[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``cmd`` with its output in ``log`` and track it."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig(),  # only prctl, safe before exec
            )
        self.procs.append(proc)
        return proc

    def end(self, procs: Sequence[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
        """Stop ``procs``: SIGTERM, wait up to ``grace`` seconds, then SIGKILL."""
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
        self.procs = [p for p in self.procs if p.poll() is None]

    def close(self) -> None:
        """End every tracked process."""
        self.end(list(self.procs))


def worker_command(port: int, datadir: Path) -> list[str]:
    """Return ``faust -A app worker -l info --web-port P --datadir D`` for this interpreter."""
    return [
        sys.executable,
        "-m",
        "faust",
        "--datadir",
        str(datadir),
        "-A",
        "app",
        "worker",
        "-l",
        "info",
        "--web-port",
        str(port),
    ]


def worker_env(
    *, app_id: str, broker: str, guarantee: str, commit_interval: float, partitions: int, extra: dict[str, str]
) -> dict[str, str]:
    """Return the environment of one orderstream worker."""
    return {
        **os.environ,
        "ORDERSTREAM_APP_ID": app_id,
        "ORDERSTREAM_BROKER": broker,
        "ORDERSTREAM_PROCESSING_GUARANTEE": guarantee,
        "ORDERSTREAM_COMMIT_INTERVAL": f"{commit_interval:g}",
        "ORDERSTREAM_PARTITIONS": str(partitions),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def log_tail(path: Path, lines: int = 15) -> str:
    """Return the last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
