"""Integration tests for scripts/kafka_local.py: real JVMs, real sockets, real failures."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from scripts import kafka_local as kl
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kafka_local.py"
HAS_PROC = Path("/proc/self/cmdline").exists()


DOCKER = kl.docker_available()

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not HAS_PROC, reason="process checks read /proc (Linux only)"),
]


# --------------------------------------------------------------------------- helpers


def java_pids_under(path: Path) -> list[int]:
    """Return pids of live (non-zombie) java processes whose command line mentions `path`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        if "java" in cmdline and str(path) in cmdline:
            pids.append(int(entry.name))
    return pids


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the launcher CLI with the test's Python and capture its output."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def read_line(stream: IO[str], timeout: float) -> str:
    """Read one line from a text pipe, failing the test if none arrives in time."""
    lines: queue.Queue[str] = queue.Queue()
    thread = threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True)
    thread.start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no output line within {timeout:.0f}s")


async def roundtrip(bootstrap: str, topic: str, replication: int, count: int) -> tuple[list[bytes], list[int]]:
    """Create a topic, produce `count` records with acks=all, consume them back."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        created = await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=replication)])
        assert [e[1] for e in created.topic_errors] == [0], created
        # Each broker learns about the new topic from the metadata log a moment later.
        deadline = time.monotonic() + 30
        replicas: list[int] = []
        while len(replicas) < 3 and time.monotonic() < deadline:
            described = await admin.describe_topics([topic])
            replicas = [len(p["replicas"]) for p in described[0]["partitions"]]
            if len(replicas) < 3:
                await asyncio.sleep(0.1)
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"order-{i}".encode(), key=str(i).encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(received) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                received.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return received, replicas


def expected_values(count: int) -> list[bytes]:
    """Return the produced values in sorted order."""
    return sorted(f"order-{i}".encode() for i in range(count))


# --------------------------------------------------------------------------- tests


def test_three_node_cluster_replicates_with_acks_all(tmp_path: Path) -> None:
    """Three combined nodes start, serve an RF=3 topic with acks=all, and stop cleanly."""
    data_dir = tmp_path / "kafka3"
    base = kl.free_port(6)
    cluster = kl.start(port=base, nodes=3, data_dir=data_dir, owner_pid=os.getpid())
    try:
        assert cluster.bootstrap == ",".join(f"127.0.0.1:{base + i}" for i in range(3))
        assert len(java_pids_under(data_dir)) == 3
        assert kl.broker_count("127.0.0.1", base + 2) == 3
        props = (data_dir / "node-2" / "server.properties").read_text()
        assert "min.insync.replicas=2" in props
        assert "transaction.state.log.min.isr=2" in props

        topic = f"kl-{uuid.uuid4().hex[:8]}"
        received, replicas = asyncio.run(roundtrip(cluster.bootstrap, topic, 3, 60))
        assert replicas == [3, 3, 3]
        assert sorted(received) == expected_values(60)
        assert (data_dir / "node-1" / "logs" / "server.log").stat().st_size > 0
    finally:
        cluster.stop()
    eventually(lambda: not java_pids_under(data_dir), 30, what="all three JVMs to exit")
    assert not list(data_dir.glob("node-*/kafka.pid"))
    assert all(kl.port_is_free(base + i) for i in range(6))


def test_cli_start_status_stop_single_node(tmp_path: Path) -> None:
    """The CLI detaches the broker, prints the bootstrap last, and stop/status agree."""
    data_dir = tmp_path / "kafka1"
    port = kl.free_port(2)
    try:
        started = run_cli("start", "--port", str(port), "--data-dir", str(data_dir))
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().splitlines()[-1] == f"127.0.0.1:{port}"
        assert "INFO" not in started.stdout + started.stderr  # broker logs go to files
        assert len(java_pids_under(data_dir)) == 1  # outlived the launcher

        up = run_cli("status", "--data-dir", str(data_dir))
        assert up.returncode == 0, up.stdout
        assert f"node 1: up  client 127.0.0.1:{port}" in up.stdout

        again = run_cli("start", "--port", str(port), "--data-dir", str(data_dir))
        assert again.returncode != 0
        assert "already running" in again.stderr
        assert "Traceback" not in again.stderr
    finally:
        stopped = run_cli("stop", "--data-dir", str(data_dir))
    assert stopped.returncode == 0, stopped.stderr
    eventually(lambda: not java_pids_under(data_dir), 30, what="the JVM to exit")
    down = run_cli("status", "--data-dir", str(data_dir))
    assert down.returncode == 3
    assert "node 1: down" in down.stdout


@pytest.mark.parametrize("taken_offset", [0, 1], ids=["client-port", "controller-port"])
def test_port_in_use_is_one_clear_sentence(tmp_path: Path, taken_offset: int) -> None:
    """A port someone else listens on fails fast with one sentence and no traceback."""
    port = kl.free_port(2)
    taken = port + taken_offset
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        result = run_cli("start", "--port", str(port), "--data-dir", str(tmp_path / "k"))
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"Port {taken} is already in use; choose another with --port or stop what is listening there."
    )
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not java_pids_under(tmp_path)


JAVA_REQUIRED = "Java 17 or newer is required to run the local Kafka broker, but"


def _fake_java_11(tmp_path: Path) -> dict[str, str]:
    """Write a `java` stand-in that reports version 11 and point ORDERSTREAM_JAVA at it."""
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.20\" 2023-07-18' >&2\n")
    fake.chmod(0o755)
    return {"ORDERSTREAM_JAVA": str(fake)}


def _empty_path(tmp_path: Path) -> dict[str, str]:
    """Return an environment whose PATH has no java on it."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return {"PATH": str(empty)}


@pytest.mark.parametrize(
    ("make_env", "sentence"),
    [
        (
            lambda _: {"ORDERSTREAM_JAVA": "/nonexistent"},
            JAVA_REQUIRED + " `/nonexistent` (from ORDERSTREAM_JAVA) was not found.",
        ),
        (
            _fake_java_11,
            JAVA_REQUIRED + " `{tmp}/java` (from ORDERSTREAM_JAVA) is Java 11.",
        ),
        (
            _empty_path,
            JAVA_REQUIRED + " `java` was not found on PATH.",
        ),
    ],
    ids=["java-missing", "java-11", "java-not-on-path"],
)
def test_unusable_java_is_one_clear_sentence(
    tmp_path: Path, make_env: Callable[[Path], dict[str, str]], sentence: str
) -> None:
    """A missing or too old Java fails with one sentence, non-zero exit, no traceback."""
    port = kl.free_port(2)
    result = run_cli(
        "start",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "k"),
        env=make_env(tmp_path),
    )
    assert result.returncode != 0
    assert result.stderr.strip() == sentence.format(tmp=tmp_path)
    assert "Traceback" not in result.stderr


def test_missing_maven_is_one_clear_sentence(tmp_path: Path) -> None:
    """With an empty cache and no Maven, `fetch` explains what is missing."""
    env = {
        "ORDERSTREAM_KAFKA_CACHE": str(tmp_path / "cache"),
        "ORDERSTREAM_MVN": "/nonexistent/mvn",
    }
    result = run_cli("fetch", env=env)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "Maven is required to fetch the Kafka 4.4.0 jars once, "
        "but `/nonexistent/mvn` (from ORDERSTREAM_MVN) was not found."
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache" / "kafka-4.4.0" / ".fetched.json").exists()


CHILD = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("kafka_local", sys.argv[1])
kl = importlib.util.module_from_spec(spec)
sys.modules["kafka_local"] = kl
spec.loader.exec_module(kl)
cluster = kl.start(port=int(sys.argv[2]), nodes=1, data_dir=sys.argv[3], owner_pid=os.getpid())
print("READY", cluster.bootstrap, flush=True)
sys.stdin.read()
"""


def test_broker_dies_with_its_owner(tmp_path: Path) -> None:
    """SIGKILLing the process that started the broker makes the watchdog stop the JVM."""
    data_dir = tmp_path / "owned"
    port = kl.free_port(2)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(SCRIPT), str(port), str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stderr is not None
        line = read_line(child.stdout, 150)
        if not line.startswith("READY"):
            child.kill()
            pytest.fail(f"child did not start Kafka: {line!r} {child.stderr.read()}")
        jvm_pid = int((data_dir / "node-1" / "kafka.pid").read_text())
        watchdog_pid = int((data_dir / "watchdog.pid").read_text())
        assert java_pids_under(data_dir) == [jvm_pid]
        assert kl.is_ready("127.0.0.1", port)

        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)

        eventually(lambda: not java_pids_under(data_dir), 30, what="the orphaned JVM to be stopped")
        eventually(lambda: not kl.pid_alive(watchdog_pid), 10, what="the watchdog to exit")
        eventually(lambda: kl.port_is_free(port), 10, what="the client port to be released")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()
        kl.stop(data_dir, grace=5.0)


@pytest.mark.skipif(
    not DOCKER,
    reason="Docker daemon is not reachable (`docker info` failed), so the testcontainers "
    "Kafka test cannot run; the local JVM launcher tests above cover the broker instead",
)
def test_testcontainers_kafka_roundtrip() -> None:
    """With Docker available, the same roundtrip works against apache/kafka via testcontainers."""
    from testcontainers.core.container import DockerContainer

    port = kl.free_port()
    container = DockerContainer(kl.DOCKER_IMAGE).with_bind_ports(port, port)
    for key, value in kl.docker_kafka_env(port).items():
        container = container.with_env(key, value)
    with container:
        assert kl.wait_until_ready([("127.0.0.1", port)], 1, 120), "Kafka container never answered"
        received, replicas = asyncio.run(roundtrip(f"127.0.0.1:{port}", f"tc-{uuid.uuid4().hex[:8]}", 1, 20))
    assert replicas == [1, 1, 1]
    assert sorted(received) == expected_values(20)
