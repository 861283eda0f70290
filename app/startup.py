"""What a worker checks and sets up before it joins the cluster.

``OrderstreamWorker`` is the app's ``Worker`` class (``faust -A app worker`` runs it):
it refuses to start where it must not (a web server beyond loopback without an admin
token, a broker that does not answer, a data directory another worker holds), each time
with one sentence on stderr and a non-zero exit instead of a traceback; it routes mode's
logging set-up through ``app.logs`` and logs the settings in effect once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import IO, Any, NoReturn

import faust

from app import logs
from app.settings import Settings, startup_problem

log = logging.getLogger("orderstream.startup")

#: Seconds a starting worker waits for the broker to accept a connection.
BROKER_WAIT = 5.0


def broker_addresses(broker_url: str) -> list[tuple[str, int]]:
    """Return ``(host, port)`` of every bootstrap server in ``kafka://a:1,kafka://b:2``."""
    out = []
    for part in broker_url.replace(";", ",").split(","):
        part = part.strip().split("://", 1)[-1].rstrip("/")
        if part:
            host, _, port = part.rpartition(":")
            out.append((host.strip("[]"), int(port)))
    return out


def broker_problem(broker_url: str, wait: float = BROKER_WAIT) -> str | None:
    """Return one sentence when no bootstrap server answers as Kafka does within ``wait`` s, else None.

    Answering is a TCP connection and a reply to Kafka's ``ApiVersions`` request: a port
    where something else listens (a web server, SSH) is named as such instead of ending in
    the client's traceback.
    """
    addresses = broker_addresses(broker_url)
    deadline = time.monotonic() + wait
    last = ""
    while True:
        for host, port in addresses:
            try:
                conn = socket.create_connection((host, port), timeout=min(2.0, max(wait, 0.1)))
            except OSError as exc:
                last = exc.strerror or str(exc) or type(exc).__name__
                continue
            with conn:
                try:
                    kafka = speaks_kafka(conn)
                except OSError:
                    kafka = False  # accepts connections, answers nothing: not a broker either
            if kafka:
                return None
            return (
                f"{host}:{port} is not a Kafka broker (it does not answer Kafka's ApiVersions request): "
                "point ORDERSTREAM_BROKER / --broker at the broker's listener, e.g. kafka://localhost:9092."
            )
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    where = ", ".join(f"{h}:{p}" for h, p in addresses)
    return (
        f"cannot reach the Kafka broker at {where} ({last}) within {wait:g} s: start Kafka "
        "(`python scripts/kafka_local.py start`, or `docker compose -f docker/compose.yml up -d kafka`) "
        "or point ORDERSTREAM_BROKER / --broker at a running broker."
    )


#: ``ApiVersions`` v0 (api key 18), correlation id 0x6f73, client id "orderstream": the first
#: request every Kafka client sends; every broker since 0.10 answers it.
_API_VERSIONS = struct.pack(">hhih", 18, 0, 0x6F73, 11) + b"orderstream"


def speaks_kafka(conn: socket.socket) -> bool:
    """Whether the peer on ``conn`` answers an ``ApiVersions`` request as a Kafka broker does
    (``OSError`` on a timeout)."""
    conn.sendall(struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS)
    head = b""
    while len(head) < 8:
        chunk = conn.recv(8 - len(head))
        if not chunk:
            return False  # closed on us: not how a broker answers
        head += chunk
    size, correlation = struct.unpack(">ii", head)
    return 4 <= size <= 1 << 20 and correlation == 0x6F73


#: The data-directory locks this process holds (open for as long as it runs).
_claimed: dict[Path, IO[str]] = {}


def datadir_problem(path: Path) -> str | None:
    """Claim ``path`` for this process; one sentence when another process holds it, else None.

    Two workers sharing a data directory would open the same partitions' RocksDB files (and
    set aside as unopenable what the other holds locked), so the first takes an exclusive
    ``flock`` on ``orderstream.lock`` in it, held until the process exits (the kernel drops it
    on a SIGKILL too, so a crash never leaves the directory claimed).
    """
    path = path.resolve()
    if path in _claimed:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = open(path / "orderstream.lock", "a+")  # noqa: SIM115 - held open while the process runs
    except OSError as exc:
        return f"cannot use the data directory {path} ({exc.strerror or exc}): point --datadir at a writable directory."
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()[:100] or "another process"
        handle.close()
        return f"the data directory {path} is in use by another worker ({holder}): give each worker its own --datadir."
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    _claimed[path] = handle
    return store_dir_problem(path / "engine")


def reclaim_datadirs() -> None:
    """Take the data-directory lock again where its file was removed (the directory wiped while running).

    The held ``flock`` is on the removed file: without a new one a second worker could claim
    the directory. Called every second from the engine's loop; a ``stat`` when all is well.
    """
    for path, handle in list(_claimed.items()):
        lock = path / "orderstream.lock"
        try:
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                continue
        except OSError:
            pass  # removed (with its directory, perhaps)
        del _claimed[path]
        handle.close()
        problem = datadir_problem(path)
        if problem:
            log.error("the data directory's lock file was removed and cannot be taken again: %s", problem)
        else:
            log.warning("the data directory's lock file %s was removed: taken again", lock)


def store_dir_problem(path: Path) -> str | None:
    """One sentence when the partition databases cannot live in ``path`` (a file in its place, not
    writable), else None: checked before the worker joins the group and is handed partitions."""
    probe = path / f".write-check-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return (
            f"cannot keep the partition databases in {path} ({exc.strerror or exc}): "
            "make it a writable directory or point --datadir elsewhere."
        )
    return None


def topics_problem(settings: Settings) -> str | None:
    """One sentence when the app's topics exist with another partition count than the settings'."""
    import asyncio

    from app.admin import partitions_problem
    from app.main import app_topics

    names, _ = app_topics()
    loop = asyncio.new_event_loop()  # not the current loop: faust's worker sets up its own next
    try:
        return loop.run_until_complete(partitions_problem(settings.broker, names, settings.partitions))
    except Exception as exc:  # noqa: BLE001 - the broker answered ApiVersions just now: the worker's own start says more
        log.warning("could not check the topics' partition counts: %s", exc)
        return None
    finally:
        loop.close()


def refuse(sentence: str) -> NoReturn:
    """Stop the process with one sentence on stderr and exit status 1."""
    print(f"orderstream: {sentence}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _settings() -> Settings:
    from app.main import settings

    return settings


class OrderstreamWorker(faust.Worker):
    """Faust's worker with start-up checks and our logging."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None  # a terminal spinner on stdout is noise in a log (and not JSON)

    def execute_from_commandline(self) -> NoReturn:
        """Check that this worker may and can start, then run it."""
        settings = _settings()
        problem = (
            startup_problem(settings, bound=str(self.app.conf.web_bind))
            or datadir_problem(Path(self.app.conf.datadir))
            or broker_problem(settings.broker)
        )
        problem = problem or topics_problem(settings)
        if problem:
            refuse(problem)
        from app.main import engine

        engine.every(1.0, lambda _: reclaim_datadirs())
        try:
            super().execute_from_commandline()
        except SystemExit as done:
            if engine.gave_up and not done.code:
                # Stopped because its partitions could not be kept (a full disk): a failure to a
                # supervisor that restarts on one, not the clean exit a SIGTERM from outside is.
                raise SystemExit(1) from None
            raise

    def _setup_logging(self) -> None:
        """Route every logger through ``app.logs`` instead of mode's colour handler and spinner."""
        settings = _settings()
        logs.configure(settings, stream=self.stderr, logfile=str(self.logfile) if self.logfile else None)
        logs.log_settings(settings)
        if self.redirect_stdouts:
            self._redirect_stdouts()


def quiet_banner_for_json(settings: Settings) -> bool:
    """With ``log_format=json`` faust's start-up banner (a text table on stdout) becomes one log record.

    Returns whether the hook was installed.
    """
    if settings.log_format != "json":
        return False
    from faust.cli import worker as worker_cli

    def on_worker_created(self: Any, worker: Any) -> None:
        log.info(
            "faust worker starting", extra={"banner": dict((str(k), str(v)) for k, v in self._banner_data(worker))}
        )

    worker_cli.worker.on_worker_created = on_worker_created  # type: ignore[method-assign]  # faust's hook
    return True
