"""Every worker flag the README documents starts a real worker with that flag (real broker).

Also: bad settings, an unreachable broker and a web server beyond loopback without an
admin token each stop the worker with one sentence and a non-zero exit, no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.kafka_local import free_port
from tests.support import ROOT, eventually, http, uid

pytestmark = [pytest.mark.integration]


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def worker_env(broker_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSTREAM_")}
    env.update(
        ORDERSTREAM_APP_ID=uid("cli"),
        ORDERSTREAM_BROKER=broker_url,
        ORDERSTREAM_PARTITIONS="2",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """Start ``faust [global] -A app worker [flags]``; everything started is stopped at the end."""
    started: list[Started] = []

    def run(
        flags: list[str], env: dict[str, str], global_flags: list[str] | None = None, port: int | None = None
    ) -> Started:
        port = port or free_port()
        datadir = ["--datadir", str(tmp_path / uid("d"))] if global_flags is None else global_flags
        cmd = [sys.executable, "-m", "faust", *datadir, "-A", "app", "worker", *flags]
        if "--web-port" not in flags and "-p" not in flags:
            cmd += ["--web-port", str(port)]
        log = tmp_path / f"{uid('w')}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        s = Started(proc, port, log)
        started.append(s)
        return s

    yield run
    for s in started:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(timeout=30)


def wait_ready(s: Started, timeout: float = 90) -> None:
    def ready() -> bool:
        if s.proc.poll() is not None:
            raise AssertionError(f"worker exited {s.proc.returncode}: {s.text()[-3000:]}")
        try:
            return http("GET", s.url + "/ready", timeout=2).status == 200
        except OSError:
            return False

    eventually(ready, timeout, 0.25, what=f"{s.url} ready")


def settings_line(s: Started) -> str:
    return next(line for line in s.text().splitlines() if "settings in effect" in line)


def test_broker_flag(start: Callable[..., Started], broker_url: str) -> None:
    # The environment names a dead broker: only the flag can make this worker start.
    s = start(["--broker", broker_url], worker_env("kafka://127.0.0.1:1"))
    wait_ready(s)
    assert f"broker={broker_url}" in settings_line(s)


def test_web_port_flag(start: Callable[..., Started], broker_url: str) -> None:
    port = free_port()
    s = start(["--web-port", str(port)], worker_env(broker_url), port=port)
    wait_ready(s)
    assert http("GET", f"http://127.0.0.1:{port}/health").status == 200


def test_datadir_flag(start: Callable[..., Started], broker_url: str, tmp_path: Path) -> None:
    datadir = tmp_path / "custom-datadir"
    s = start([], worker_env(broker_url), global_flags=["--datadir", str(datadir)])
    wait_ready(s)
    assert any(datadir.iterdir())
    assert f"datadir={datadir}" in settings_line(s)


@pytest.mark.parametrize("flag", [["-l", "debug"], ["--loglevel", "debug"]])
def test_loglevel_flag(start: Callable[..., Started], broker_url: str, flag: list[str]) -> None:
    s = start(flag, worker_env(broker_url, ORDERSTREAM_LOG_LEVEL="warn"))
    wait_ready(s)
    assert "log_level=debug" in settings_line(s)
    assert " DEBUG " in s.text()


def test_log_level_environment_sets_the_level(start: Callable[..., Started], broker_url: str) -> None:
    s = start([], worker_env(broker_url, ORDERSTREAM_LOG_LEVEL="warn"))
    wait_ready(s)
    assert " INFO " not in s.text()


def test_web_bind_flag_keeps_faust_meaning(start: Callable[..., Started], broker_url: str) -> None:
    s = start(["-b", "127.0.0.1"], worker_env(broker_url))
    wait_ready(s)
    line = settings_line(s)
    assert "web_bind=127.0.0.1" in line and f"broker={broker_url}" in line


def test_web_host_flag_sets_the_canonical_url(start: Callable[..., Started], broker_url: str) -> None:
    s = start(["--web-host", "localhost"], worker_env(broker_url))
    wait_ready(s)
    assert http("GET", s.url + "/health").body["worker"] == f"http://localhost:{s.port}"


def test_orderstream_setting_flag(start: Callable[..., Started], broker_url: str) -> None:
    s = start(["--orderstream-payment-timeout=5", "--orderstream-gateway-timeout", "2"], worker_env(broker_url))
    wait_ready(s)
    line = settings_line(s)
    assert "payment_timeout=5.0" in line and "gateway_timeout=2.0" in line


def test_json_log_format_every_line_parses(start: Callable[..., Started], broker_url: str) -> None:
    s = start(["--orderstream-log-format=json"], worker_env(broker_url))
    wait_ready(s)
    http("GET", s.url + "/orders/nope")
    s.proc.send_signal(signal.SIGTERM)
    s.proc.wait(timeout=60)
    lines = [line for line in s.text().splitlines() if line.strip()]
    assert len(lines) > 10
    bad = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    assert not bad, bad[:5]


def test_admin_token_beyond_loopback_starts(start: Callable[..., Started], broker_url: str) -> None:
    s = start(["-b", "0.0.0.0"], worker_env(broker_url, ORDERSTREAM_ADMIN_TOKEN="t0ken"))
    wait_ready(s)


def test_live_metrics_pass_promtool(start: Callable[..., Started], broker_url: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    s = start([], worker_env(broker_url))
    wait_ready(s)
    http("GET", s.url + "/orders/nope")
    eventually(
        lambda: "orderstream_consumer_lag{" in http("GET", s.url + "/metrics").raw.decode(),
        30,
        0.5,
        what="consumer lag sampled",
    )
    body = http("GET", s.url + "/metrics").raw
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


# --- refusals: one sentence, non-zero exit, no traceback ------------------------------


def refused(flags: list[str], env: dict[str, str], tmp_path: Path) -> str:
    cmd = [sys.executable, "-m", "faust", "--datadir", str(tmp_path / "d"), "-A", "app", "worker", *flags]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("orderstream:")]
    return line


def test_bad_setting_value_exits_with_its_sentence(tmp_path: Path) -> None:
    env = worker_env("kafka://127.0.0.1:1", ORDERSTREAM_GATEWAY_CONCURRENCY="0")
    line = refused(["--orderstream-commit-interval=-1"], env, tmp_path)
    assert "gateway_concurrency=0 is out of range; use a whole number from 1 to 10000." in line
    assert "commit_interval=-1 is out of range; use more than 0 and at most 60 seconds." in line


def test_unreachable_broker_is_one_sentence(tmp_path: Path) -> None:
    line = refused(["--broker", "kafka://127.0.0.1:1"], worker_env("kafka://127.0.0.1:1"), tmp_path)
    assert "cannot reach the Kafka broker at 127.0.0.1:1" in line and "ORDERSTREAM_BROKER" in line


@pytest.mark.parametrize("greeting", [b"", b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_a_port_where_no_kafka_listens_is_one_sentence(tmp_path: Path, greeting: bytes) -> None:
    """Something else on the broker's port (silent, SSH, a web server): named, not a client traceback."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                conn.sendall(greeting)
                threading.Timer(10, conn.close).start()

    threading.Thread(target=answer, daemon=True).start()
    try:
        url = f"kafka://127.0.0.1:{port}"
        line = refused(["--broker", url], worker_env(url), tmp_path)
    finally:
        server.close()
    assert f"127.0.0.1:{port} is not a Kafka broker" in line and "ORDERSTREAM_BROKER" in line


def test_a_data_directory_whose_engine_folder_is_unusable_is_one_sentence(tmp_path: Path) -> None:
    """Refused before the worker joins the group: it would be handed partitions it cannot hold."""
    engine = tmp_path / "d" / "engine"
    engine.parent.mkdir()
    engine.write_text("x")  # a file where the partition databases go
    line = refused([], worker_env("kafka://127.0.0.1:1"), tmp_path)
    assert f"cannot keep the partition databases in {engine}" in line and "--datadir" in line


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["-b", "0.0.0.0"], {}),
        (["-b0.0.0.0"], {}),  # click's attached short form, which faust applies (probe 17)
        ([], {"WEB_BIND": "0.0.0.0"}),  # faust's own variable, which overrides the settings' bind
    ],
    ids=["flag", "attached-flag", "faust-env"],
)
def test_beyond_loopback_without_admin_token_refuses(flags: list[str], env: dict[str, str], tmp_path: Path) -> None:
    line = refused(flags, {**worker_env("kafka://127.0.0.1:1"), **env}, tmp_path)
    assert "without an admin token" in line and "ORDERSTREAM_ADMIN_TOKEN" in line


def test_a_worker_set_to_another_partition_count_than_its_app_s_topics_refuses(
    broker_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """It joined, took partitions and hashed keys modulo its own count: stock commands dead-lettered
    as on the wrong partition, forwarded reads bounced between workers (probe 18)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    app_id = uid("pc")

    async def create() -> None:
        client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await client.start()
        try:
            await client.create_topics([NewTopic(f"{app_id}.orders", num_partitions=8, replication_factor=1)])
        finally:
            await client.close()

    asyncio.run(create())
    env = {**worker_env(broker_url), "ORDERSTREAM_APP_ID": app_id, "ORDERSTREAM_PARTITIONS": "4"}
    line = refused([], env, tmp_path)
    assert f"{app_id}.orders" in line and "partitions=4" in line and "ORDERSTREAM_PARTITIONS=8" in line, line
