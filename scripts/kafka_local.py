#!/usr/bin/env python3
"""Run a throwaway local Apache Kafka (KRaft) cluster from Maven Central jars, without Docker."""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Self

KAFKA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
SLF4J_VERSION = "2.0.17"
LOG4J_VERSION = "2.25.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
DOCKER_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
MIN_JAVA = 17
HOST = "127.0.0.1"
DEFAULT_PORT = 9092
START_TIMEOUT = 90.0
STOP_GRACE = 20.0
CLIENT_ID = b"orderstream-kafka-local"
NODE_MARKER = "-Dorderstream.kafka.node="
JVM_OPTS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)
TOOL_JVM_OPTS = (
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
)

Logger = Callable[[str], None]


class KafkaLocalError(Exception):
    """A failure explained to the user in one sentence, with optional detail lines."""

    def __init__(self, message: str, details: str = "") -> None:
        """Keep the one-sentence message and the optional details apart."""
        super().__init__(message)
        self.message = message
        self.details = details


def _quiet(_: str) -> None:
    """Discard a progress message."""


def _say(message: str) -> None:
    """Print a progress message on stderr."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- paths


def cache_root() -> Path:
    """Return the cache directory, `$ORDERSTREAM_KAFKA_CACHE` or ~/.cache/orderstream."""
    configured = os.environ.get("ORDERSTREAM_KAFKA_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "orderstream"


def kafka_home() -> Path:
    """Return the directory holding the pinned Kafka version's pom, jars and fetch marker."""
    return cache_root() / f"kafka-{KAFKA_VERSION}"


def libs_dir() -> Path:
    """Return the directory the Kafka jars are copied into."""
    return kafka_home() / "libs"


def default_data_dir() -> Path:
    """Return the data directory used when `--data-dir` is not given."""
    return cache_root() / "kafka-data"


# --------------------------------------------------------------------------- java and maven


def _override_or_path(env_var: str, name: str) -> tuple[str, str]:
    """Return the binary to run and the phrase saying it is missing, e.g. "`java` was not found on PATH"."""
    override = os.environ.get(env_var)
    if override:
        return override, f"`{override}` (from {env_var}) was not found"
    return shutil.which(name) or name, f"`{name}` was not found on PATH"


def find_java() -> str:
    """Return a Java 17+ binary (`$ORDERSTREAM_JAVA` or `java` on PATH), or raise a clear error."""
    java, not_found = _override_or_path("ORDERSTREAM_JAVA", "java")
    described = not_found.removesuffix(" on PATH").removesuffix(" was not found")
    prefix = f"Java {MIN_JAVA} or newer is required to run the local Kafka broker, but"
    try:
        result = subprocess.run(
            [java, "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError:
        raise KafkaLocalError(f"{prefix} {not_found}.") from None
    except PermissionError:
        raise KafkaLocalError(f"{prefix} {described} is not executable.") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaLocalError(f"{prefix} running `{java} -version` failed ({exc}).") from None
    major = parse_java_major(result.stderr + result.stdout)
    if major is None:
        raise KafkaLocalError(f"{prefix} the version printed by `{java} -version` could not be understood.")
    if major < MIN_JAVA:
        raise KafkaLocalError(f"{prefix} {described} is Java {major}.")
    return java


def parse_java_major(text: str) -> int | None:
    """Return the major Java version from `java -version` output, e.g. 8 for 1.8.0 and 17 for 17.0.2."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        return int(match.group(2))
    return major


def _find_mvn() -> tuple[str, str]:
    """Return the Maven binary (`$ORDERSTREAM_MVN` or `mvn` on PATH) and the phrase saying it is missing."""
    return _override_or_path("ORDERSTREAM_MVN", "mvn")


def _pom() -> str:
    """Return the pom whose runtime dependencies are the broker's classpath."""
    deps = [
        ("org.slf4j", "slf4j-api", SLF4J_VERSION),
        ("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
    ]
    body = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>orderstream</groupId><artifactId>kafka-local</artifactId><version>{KAFKA_VERSION}</version>\n"
        "  <packaging>pom</packaging>\n"
        f"  <dependencies>\n{body}\n  </dependencies>\n"
        "</project>\n"
    )


def _marker() -> Path:
    """Return the file whose presence says the jars were fetched completely."""
    return kafka_home() / ".fetched.json"


def is_fetched() -> bool:
    """Tell whether the pinned Kafka jars are already in the cache."""
    try:
        listed = json.loads(_marker().read_text())
    except (OSError, ValueError):
        return False
    jars = listed.get("jars") if isinstance(listed, dict) else None
    if not isinstance(jars, list) or not jars:
        return False
    return all((libs_dir() / str(jar)).is_file() for jar in jars)


@contextlib.contextmanager
def _file_lock(path: Path, log: Logger) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("Waiting for another process to finish fetching the Kafka jars...")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def fetch(log: Logger = _quiet) -> Path:
    """Download the pinned Kafka jars with Maven once and return the directory holding them."""
    if is_fetched():
        return libs_dir()
    home = kafka_home()
    with _file_lock(home / ".lock", log):
        if is_fetched():
            return libs_dir()
        mvn, not_found = _find_mvn()
        missing = KafkaLocalError(f"Maven is required to fetch the Kafka {KAFKA_VERSION} jars once, but {not_found}.")
        if shutil.which(mvn) is None:
            raise missing
        pom = home / "pom.xml"
        pom.write_text(_pom())
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
        mvn_log = home / "mvn.log"
        log(f"Fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central (once, ~45 MB)...")
        command = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        try:
            with open(mvn_log, "w") as out:
                code = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=1800,
                    check=False,
                ).returncode
        except (FileNotFoundError, PermissionError):
            shutil.rmtree(staging, ignore_errors=True)
            raise missing from None
        except subprocess.TimeoutExpired:
            code = -1
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if code != 0 or f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar" not in jars:
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaLocalError(
                f"Maven could not resolve the Kafka {KAFKA_VERSION} jars from Maven Central; "
                f"see {mvn_log} for details.",
                _tail(mvn_log, 15),
            )
        shutil.rmtree(libs_dir(), ignore_errors=True)
        staging.rename(libs_dir())
        tmp_marker = _marker().with_suffix(".tmp")
        tmp_marker.write_text(json.dumps({"version": KAFKA_VERSION, "jars": jars}, indent=1))
        os.replace(tmp_marker, _marker())
        log(f"Fetched {len(jars)} jars into {libs_dir()}.")
    return libs_dir()


# --------------------------------------------------------------------------- ports


def port_is_free(port: int, host: str = HOST) -> bool:
    """Tell whether a TCP port can be bound on `host` (the way the broker will bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """Return the first of `count` consecutive free TCP ports on 127.0.0.1, picked at random."""
    rng = random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - count)
        if all(port_is_free(base + offset) for offset in range(count)):
            return base
    raise KafkaLocalError(f"Could not find {count} consecutive free TCP ports on {HOST}.")


def _check_ports(ports: Sequence[int]) -> None:
    """Raise a clear error for the first port that something else already uses."""
    for port in ports:
        if not 0 < port < 65536:
            raise KafkaLocalError(f"Port {port} is not a valid TCP port; choose another with --port.")
        if not port_is_free(port):
            raise KafkaLocalError(
                f"Port {port} is already in use; choose another with --port or stop what is listening there."
            )


# --------------------------------------------------------------------------- wire protocol


class KafkaProtocolError(Exception):
    """A Kafka response that could not be understood."""


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    """Read exactly `size` bytes from a socket."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise KafkaProtocolError("connection closed mid-response")
        chunks.extend(chunk)
    return bytes(chunks)


def _kafka_request(host: str, port: int, api_key: int, api_version: int, body: bytes, timeout: float) -> bytes:
    """Send one request with a v1 header and return the response body after the correlation id."""
    correlation_id = random.randrange(1, 2**31 - 1)
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 4 <= size <= 16 * 1024 * 1024:
            raise KafkaProtocolError(f"implausible response size {size}")
        data = _recv_exact(sock, size)
    (received,) = struct.unpack_from(">i", data, 0)
    if received != correlation_id:
        raise KafkaProtocolError("correlation id mismatch")
    return data[4:]


def api_versions(host: str, port: int, timeout: float = 2.0) -> dict[int, tuple[int, int]]:
    """Send ApiVersionsRequest v0 and return {api_key: (min_version, max_version)}, raising on an error code."""
    body = _kafka_request(host, port, api_key=18, api_version=0, body=b"", timeout=timeout)
    error_code, count = struct.unpack_from(">hi", body, 0)
    if error_code != 0:
        raise KafkaProtocolError(f"ApiVersions error code {error_code}")
    versions: dict[int, tuple[int, int]] = {}
    for index in range(count):
        key, low, high = struct.unpack_from(">hhh", body, 6 + 6 * index)
        versions[key] = (low, high)
    return versions


def broker_count(host: str, port: int, timeout: float = 2.0) -> int:
    """Send a MetadataRequest (v1..v8, no topics) and return how many live brokers it lists."""
    low, high = api_versions(host, port, timeout).get(3, (0, -1))
    version = max(low, 1)
    if version > min(high, 8):
        raise KafkaProtocolError(f"no usable Metadata version in {low}..{high}")
    body = struct.pack(">i", 0)
    if version >= 4:
        body += b"\x00"
    if version >= 8:
        body += b"\x00\x00"
    response = _kafka_request(host, port, api_key=3, api_version=version, body=body, timeout=timeout)
    offset = 4 if version >= 3 else 0
    (count,) = struct.unpack_from(">i", response, offset)
    return int(count)


def is_ready(host: str, port: int, expected_brokers: int = 1, timeout: float = 2.0) -> bool:
    """Tell whether a broker answers ApiVersions and its metadata lists `expected_brokers` brokers."""
    try:
        return broker_count(host, port, timeout) >= expected_brokers
    except (OSError, KafkaProtocolError, struct.error):
        return False


def wait_until_ready(addresses: Sequence[tuple[str, int]], expected_brokers: int, timeout: float) -> bool:
    """Poll every address until it is ready or `timeout` seconds pass; return whether all became ready."""
    deadline = time.monotonic() + timeout
    pending = list(addresses)
    while pending:
        pending = [a for a in pending if not is_ready(a[0], a[1], expected_brokers)]
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)
    return True


# --------------------------------------------------------------------------- processes


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Return /proc/PID/stat fields from the state onwards, or None when unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def process_start_time(pid: int) -> str | None:
    """Return a process's start time in clock ticks (Linux), used to detect pid reuse."""
    fields = _proc_stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie, reaping it first when it is our child."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat_fields(pid)
    return not (fields and fields[0] in ("Z", "X"))


def process_cmdline(pid: int) -> str | None:
    """Return a process's command line joined by spaces, or None when it does not exist."""
    if Path("/proc/self/cmdline").exists():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None
    try:
        result = subprocess.run(
            ["ps", "-p", str(pid), "-o", "command="],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def _signal(pid: int, signum: int) -> None:
    """Send a signal, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def terminate(pids: Sequence[int], grace: float = STOP_GRACE) -> list[int]:
    """SIGTERM the processes, wait up to `grace` seconds, SIGKILL the rest; return any that survived."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    remaining = list(pids)
    for signum, wait in ((signal.SIGKILL, grace), (None, 10.0)):
        deadline = time.monotonic() + wait
        while remaining and time.monotonic() < deadline:
            remaining = [pid for pid in remaining if pid_alive(pid)]
            if remaining:
                time.sleep(0.1)
        remaining = [pid for pid in remaining if pid_alive(pid)]
        if signum is not None:
            for pid in remaining:
                _signal(pid, signum)
    return remaining


def _tail(path: Path, lines: int) -> str:
    """Return the last `lines` lines of a text file, or an empty string."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- cluster layout


@dataclasses.dataclass(frozen=True)
class Node:
    """One combined broker+controller process of the local cluster."""

    node_id: int
    port: int
    controller_port: int
    directory: Path

    @property
    def address(self) -> str:
        """Return the client address host:port."""
        return f"{HOST}:{self.port}"

    @property
    def properties(self) -> Path:
        """Return the server.properties path."""
        return self.directory / "server.properties"

    @property
    def log4j(self) -> Path:
        """Return the log4j2 configuration path."""
        return self.directory / "log4j2.properties"

    @property
    def pid_file(self) -> Path:
        """Return the pid file path."""
        return self.directory / "kafka.pid"

    @property
    def server_log(self) -> Path:
        """Return the broker's log file path."""
        return self.directory / "logs" / "server.log"

    @property
    def console_log(self) -> Path:
        """Return the file that receives the JVM's stdout and stderr."""
        return self.directory / "console.log"

    @property
    def marker(self) -> str:
        """Return the JVM argument that tags this node's process."""
        return f"{NODE_MARKER}{self.directory}"

    def read_pid(self) -> int | None:
        """Return the pid from the pid file, or None."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """Return the pid when this node's JVM is alive (and really is this node), else None."""
        pid = self.read_pid()
        if pid is None or not pid_alive(pid):
            return None
        cmdline = process_cmdline(pid)
        return pid if cmdline is not None and self.marker in cmdline else None

    def log_excerpt(self, lines: int = 25) -> str:
        """Return the last lines of the node's console and server logs."""
        parts = []
        for path in (self.console_log, self.server_log):
            text = _tail(path, lines)
            if text.strip():
                parts.append(f"--- {path} ---\n{text}")
        return "\n".join(parts) or f"(no log output in {self.directory})"


def plan_nodes(port: int, nodes: int, data_dir: Path, controller_port: int | None = None) -> list[Node]:
    """Lay out client ports PORT.. and controller ports after them (or from `controller_port`)."""
    first_controller = controller_port if controller_port is not None else port + nodes
    return [
        Node(
            node_id=i + 1,
            port=port + i,
            controller_port=first_controller + i,
            directory=data_dir / f"node-{i + 1}",
        )
        for i in range(nodes)
    ]


def server_properties(node: Node, all_nodes: Sequence[Node]) -> str:
    """Return the server.properties text for one node of the cluster."""
    size = len(all_nodes)
    replication = min(size, 3)
    min_isr = 2 if size >= 3 else 1
    voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in all_nodes)
    settings: dict[str, object] = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": node.directory / "data",
        "num.partitions": 8,
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        "default.replication.factor": replication,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replication,
        "offsets.topic.num.partitions": 8,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": 8,
        "share.coordinator.state.topic.replication.factor": replication,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": 0,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "background.threads": 4,
        "num.recovery.threads.per.data.dir": 1,
        "log.retention.hours": 24,
        "log.retention.bytes": 1024**3,
        "log.segment.bytes": 64 * 1024**2,
        # Each partition's active segment maps its offset and time indexes at this size. At
        # Kafka's 10 MB, a broker that had hosted ~1,250 partitions (a few bench runs, or the
        # test suite's topics) spent 5-8x the CPU per produced record on this VM kind, inside
        # the index appends; at 1 MB it stayed flat past 2,300 partitions (docs/PERFORMANCE.md).
        # 1 MB still indexes 128 MB of log per segment (one entry per 4 KB), twice a segment.
        "log.index.size.max.bytes": 1024**2,
        "log.retention.check.interval.ms": 60_000,
        "log.cleaner.threads": 1,
        "log.cleaner.dedupe.buffer.size": 16 * 1024**2,
    }
    header = f"# Generated by scripts/kafka_local.py for Apache Kafka {KAFKA_VERSION}; overwritten on every start.\n"
    return header + "".join(f"{key}={value}\n" for key, value in settings.items())


def log4j_properties(node: Node) -> str:
    """Return a log4j2 configuration that logs to the node's directory instead of the console."""
    log_file = node.server_log
    return f"""# Generated by scripts/kafka_local.py: the broker logs to {log_file}.
status = warn
name = orderstream-kafka-local
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.server.name = org.apache.kafka.server
logger.server.level = INFO
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.raft.name = org.apache.kafka.raft
logger.raft.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.logcleaner.name = kafka.log.LogCleaner
logger.logcleaner.level = WARN
"""


def _formatted_cluster_id(nodes: Sequence[Node]) -> str | None:
    """The cluster id every node's storage was formatted with, or ``None`` unless all agree."""
    ids = set()
    for node in nodes:
        meta = node.directory / "data" / "meta.properties"
        if not meta.exists():
            return None
        lines = meta.read_text().splitlines()
        found = [line.split("=", 1)[1].strip() for line in lines if line.startswith("cluster.id=")]
        if not found:
            return None
        ids.add(found[0])
    return ids.pop() if len(ids) == 1 else None


def _new_cluster_id() -> str:
    """Return a random Kafka cluster id (16 random bytes, URL-safe base64 without padding)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _state_file(data_dir: Path) -> Path:
    """Return the JSON file describing the cluster in a data directory."""
    return data_dir / "cluster.json"


def _watchdog_pid_file(data_dir: Path) -> Path:
    """Return the watchdog's pid file."""
    return data_dir / "watchdog.pid"


@dataclasses.dataclass
class Cluster:
    """A local Kafka cluster started by this module; `.bootstrap` for clients, `.stop()` to end it."""

    data_dir: Path
    nodes: list[Node]
    cluster_id: str
    processes: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list, repr=False)
    watchdog: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        """Return the comma-separated bootstrap servers."""
        return ",".join(node.address for node in self.nodes)

    def pids(self) -> list[int]:
        """Return the pids of this cluster's JVMs that are still running."""
        return [pid for pid in (node.running_pid() for node in self.nodes) if pid is not None]

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop every node (SIGTERM, then SIGKILL after `grace` seconds) and the watchdog."""
        stop(self.data_dir, grace=grace)
        for process in [*self.processes, *([self.watchdog] if self.watchdog else [])]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def __enter__(self) -> Self:
        """Return the running cluster."""
        return self

    def __exit__(self, *_: object) -> None:
        """Stop the cluster."""
        self.stop()

    def save(self) -> None:
        """Write cluster.json so `stop` and `status` can find the nodes later."""
        state = {
            "kafka_version": KAFKA_VERSION,
            "cluster_id": self.cluster_id,
            "bootstrap": self.bootstrap,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "port": n.port,
                    "controller_port": n.controller_port,
                    "dir": str(n.directory),
                }
                for n in self.nodes
            ],
        }
        _state_file(self.data_dir).write_text(json.dumps(state, indent=1) + "\n")

    @classmethod
    def load(cls, data_dir: Path) -> Cluster | None:
        """Read cluster.json from a data directory, or return None when there is none."""
        try:
            state: dict[str, Any] = json.loads(_state_file(data_dir).read_text())
            nodes = [
                Node(
                    int(n["node_id"]),
                    int(n["port"]),
                    int(n["controller_port"]),
                    Path(n["dir"]),
                )
                for n in state["nodes"]
            ]
            return cls(data_dir=data_dir, nodes=nodes, cluster_id=str(state["cluster_id"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


# --------------------------------------------------------------------------- start / stop / status


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    """Return a preexec_fn that makes the child get SIGKILL when the launching thread dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        """Ask the kernel to kill this child when its parent goes away."""
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _java_command(java: str, libs: Path, log4j: Path, extra: Sequence[str], main: Sequence[str]) -> list[str]:
    """Return a java command line running a Kafka main class with the cached jars."""
    user_opts = os.environ.get("ORDERSTREAM_KAFKA_JVM_OPTS", "").split()
    return [
        java,
        *extra,
        *user_opts,
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{libs}/*",
        *main,
    ]


def _format_storage(java: str, libs: Path, nodes: Sequence[Node], cluster_id: str) -> None:
    """Format every node's KRaft storage in parallel, raising with the tool's output on failure."""
    running: list[tuple[Node, subprocess.Popen[str]]] = []
    for node in nodes:
        command = _java_command(
            java,
            libs,
            node.log4j,
            TOOL_JVM_OPTS,
            [
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(node.properties),
            ],
        )
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        running.append((node, process))
    failures: list[tuple[Node, str]] = []
    for node, process in running:
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        if process.returncode != 0:
            failures.append((node, output))
    if failures:
        node, output = failures[0]
        raise KafkaLocalError(
            f"Formatting the KRaft storage of Kafka node {node.node_id} failed; its output follows.",
            "\n".join(output.strip().splitlines()[-15:]),
        )


def _clear_old_nodes(data_dir: Path) -> None:
    """Remove node directories left by an earlier run so every start gets a fresh cluster."""
    for child in data_dir.glob("node-*"):
        if child.is_dir() and ((child / "server.properties").exists() or (child / "data").exists()):
            shutil.rmtree(child)
    for leftover in (_state_file(data_dir), _watchdog_pid_file(data_dir)):
        leftover.unlink(missing_ok=True)


def _spawn_watchdog(data_dir: Path, owner_pid: int) -> subprocess.Popen[bytes]:
    """Start a detached process that stops the cluster as soon as `owner_pid` dies."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_watchdog",
        "--owner-pid",
        str(owner_pid),
        "--owner-start",
        process_start_time(owner_pid) or "",
        "--data-dir",
        str(data_dir),
    ]
    with open(data_dir / "watchdog.log", "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _watchdog_pid_file(data_dir).write_text(f"{process.pid}\n")
    return process


def running_cluster(data_dir: Path) -> Cluster | None:
    """Return the cluster recorded in `data_dir` when at least one of its nodes still runs."""
    cluster = Cluster.load(data_dir.resolve())
    return cluster if cluster is not None and cluster.pids() else None


def start(
    port: int = DEFAULT_PORT,
    nodes: int = 1,
    data_dir: Path | str | None = None,
    owner_pid: int | None = None,
    *,
    controller_port: int | None = None,
    timeout: float = START_TIMEOUT,
    foreground: bool = False,
    log: Logger = _quiet,
    keep: bool = False,
) -> Cluster:
    """Format and start a 1- or 3-node KRaft cluster; return once every node serves metadata.

    With ``keep``, a cluster formatted in ``data_dir`` by an earlier run is started again
    with its data (same cluster id, same topics and offsets) instead of a fresh one.
    """
    if nodes not in (1, 3):
        raise KafkaLocalError(f"A local cluster has 1 or 3 nodes, not {nodes}.")
    data_path = Path(data_dir).expanduser().resolve() if data_dir is not None else default_data_dir().resolve()
    java = find_java()
    existing = running_cluster(data_path)
    if existing is not None:
        raise KafkaLocalError(
            f"A local Kafka cluster is already running from {data_path} ({existing.bootstrap}); "
            f"stop it first with `python scripts/kafka_local.py stop --data-dir {data_path}`."
        )
    layout = plan_nodes(port, nodes, data_path, controller_port)
    _check_ports([n.port for n in layout] + [n.controller_port for n in layout])
    libs = fetch(log)

    data_path.mkdir(parents=True, exist_ok=True)
    kept = _formatted_cluster_id(layout) if keep else None
    if kept is None:
        _clear_old_nodes(data_path)
    cluster = Cluster(data_dir=data_path, nodes=layout, cluster_id=kept or _new_cluster_id())
    for node in layout:
        (node.directory / "logs").mkdir(parents=True, exist_ok=True)
        node.properties.write_text(server_properties(node, layout))
        node.log4j.write_text(log4j_properties(node))
    cluster.save()
    if kept is None:
        log(f"Formatting KRaft storage for {nodes} node(s) in {data_path}...")
        _format_storage(java, libs, layout, cluster.cluster_id)
    else:
        log(f"Starting the Kafka cluster {kept} kept in {data_path} (its topics and offsets as they were)...")

    preexec = _pdeathsig_preexec(os.getpid()) if foreground and sys.platform.startswith("linux") else None
    try:
        for node in layout:
            command = _java_command(
                java,
                libs,
                node.log4j,
                [*JVM_OPTS, node.marker],
                ["kafka.Kafka", str(node.properties)],
            )
            with open(node.console_log, "ab") as console:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    cwd=node.directory,
                    start_new_session=True,
                    # Only the main thread spawns here; the hook just calls prctl.
                    preexec_fn=preexec,
                )
            cluster.processes.append(process)
            node.pid_file.write_text(f"{process.pid}\n")
        if owner_pid is not None:
            cluster.watchdog = _spawn_watchdog(data_path, owner_pid)
        log(f"Starting Kafka {KAFKA_VERSION} ({nodes} node(s)) on {cluster.bootstrap}; logs in {data_path}...")
        _wait_for_cluster(cluster, timeout)
    except BaseException:
        cluster.stop(grace=5.0)
        raise
    return cluster


def _wait_for_cluster(cluster: Cluster, timeout: float) -> None:
    """Wait until every node answers metadata listing all nodes, failing fast if a JVM exits."""
    deadline = time.monotonic() + timeout
    pending = list(cluster.nodes)
    while pending:
        for node, process in zip(cluster.nodes, cluster.processes, strict=True):
            code = process.poll()
            if code is not None:
                raise KafkaLocalError(
                    f"Kafka node {node.node_id} exited with code {code} during startup; the end of its logs follows.",
                    node.log_excerpt(),
                )
        pending = [n for n in pending if not is_ready(HOST, n.port, len(cluster.nodes))]
        if not pending:
            return
        if time.monotonic() >= deadline:
            node = pending[0]
            raise KafkaLocalError(
                f"Kafka did not answer on {node.address} within {timeout:.0f} seconds; the end of its logs follows.",
                node.log_excerpt(),
            )
        time.sleep(0.25)


def stop(data_dir: Path | str | None = None, grace: float = STOP_GRACE) -> int:
    """Stop the nodes recorded in a data directory and their watchdog; return how many JVMs were stopped."""
    data_path = Path(data_dir).expanduser().resolve() if data_dir is not None else default_data_dir().resolve()
    cluster = Cluster.load(data_path)
    node_dirs = [n.directory for n in cluster.nodes] if cluster else sorted(data_path.glob("node-*"))
    nodes = [Node(0, 0, 0, directory) for directory in node_dirs]
    pids = [pid for pid in (n.running_pid() for n in nodes) if pid is not None]
    survivors = terminate(pids, grace) if pids else []
    for node in nodes:
        if node.read_pid() not in survivors:
            node.pid_file.unlink(missing_ok=True)
    _stop_watchdog(data_path)
    if survivors:
        raise KafkaLocalError(f"Kafka processes {survivors} in {data_path} did not exit even after SIGKILL.")
    return len(pids)


def _stop_watchdog(data_path: Path) -> None:
    """Terminate the cluster's watchdog unless it is the caller itself."""
    pid_file = _watchdog_pid_file(data_path)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if pid != os.getpid():
        cmdline = process_cmdline(pid) or ""
        if pid_alive(pid) and "_watchdog" in cmdline and str(data_path) in cmdline:
            terminate([pid], grace=5.0)
    pid_file.unlink(missing_ok=True)


def status(data_dir: Path | str | None = None) -> tuple[bool, list[str]]:
    """Return whether every node is up, and one line per node describing it."""
    data_path = Path(data_dir).expanduser().resolve() if data_dir is not None else default_data_dir().resolve()
    cluster = Cluster.load(data_path)
    if cluster is None:
        return False, [f"down: no local Kafka cluster recorded in {data_path}"]
    lines = []
    all_up = True
    for node in cluster.nodes:
        pid = node.running_pid()
        up = pid is not None and is_ready(HOST, node.port, 1)
        all_up = all_up and up
        state = "up" if up else ("starting or unresponsive" if pid is not None else "down")
        lines.append(
            f"node {node.node_id}: {state}  client {node.address}  controller {HOST}:{node.controller_port}"
            + (f"  pid {pid}" if pid is not None else "")
        )
    return all_up, lines


# --------------------------------------------------------------------------- watchdog


def _owner_alive(pid: int, start_time: str) -> bool:
    """Tell whether the owner process still runs (and is the same process, not a reused pid)."""
    if not pid_alive(pid):
        return False
    return not start_time or process_start_time(pid) in (None, start_time)


def run_watchdog(owner_pid: int, owner_start: str, data_dir: Path) -> int:
    """Stop the cluster in `data_dir` once the owner dies; exit when the cluster is gone anyway."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        cluster = Cluster.load(data_dir)
        if cluster is None or not cluster.pids():
            return 0
        if not _owner_alive(owner_pid, owner_start):
            print(f"owner {owner_pid} died; stopping {cluster.bootstrap}", flush=True)
            with contextlib.suppress(KafkaLocalError):
                stop(data_dir, grace=5.0)
            return 0
        time.sleep(0.5)


# --------------------------------------------------------------------------- docker


def docker_available(timeout: float = 5.0) -> bool:
    """Tell whether a docker client is installed and its daemon answers `docker info` quickly."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def docker_kafka_env(port: int, advertised_host: str = HOST) -> dict[str, str]:
    """Return env settings for a single-node KRaft `apache/kafka` container published on the same host port."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{port},CONTROLLER://:29093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{advertised_host}:{port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:29093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_PARTITIONS": "8",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
        "CLUSTER_ID": _new_cluster_id(),
    }


# --------------------------------------------------------------------------- CLI


class _Interrupted(Exception):
    """Raised by the foreground signal handler to unwind and stop the cluster."""


def _run_foreground(cluster: Cluster) -> int:
    """Keep the launcher in the foreground until a signal or a node exit, then stop the cluster."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        """Turn SIGINT/SIGTERM/SIGHUP into an exception that unwinds to the cleanup."""
        raise _Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        while True:
            for node, process in zip(cluster.nodes, cluster.processes, strict=True):
                code = process.poll()
                if code is not None:
                    raise KafkaLocalError(
                        f"Kafka node {node.node_id} exited with code {code}; the end of its logs follows.",
                        node.log_excerpt(),
                    )
            time.sleep(0.5)
    except _Interrupted as interrupted:
        _say(f"Received {interrupted}; stopping Kafka...")
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        cluster.stop()
        _say("Kafka stopped.")


def _parser() -> argparse.ArgumentParser:
    """Build the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="kafka_local.py",
        description=f"Run a throwaway local Apache Kafka {KAFKA_VERSION} (KRaft) cluster from Maven Central jars.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    data_help = f"cluster data directory (default {default_data_dir()})"

    start_cmd = commands.add_parser(
        "start", help="format and start a fresh cluster (--keep: restart the one in --data-dir); prints the bootstrap"
    )
    start_cmd.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="first client port (default 9092)",
    )
    start_cmd.add_argument(
        "--nodes",
        type=int,
        choices=(1, 3),
        default=1,
        help="number of nodes (default 1)",
    )
    start_cmd.add_argument("--controller-port", type=int, help="first controller port (default PORT+NODES)")
    start_cmd.add_argument("--data-dir", type=Path, help=data_help)
    start_cmd.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached; stop Kafka on Ctrl-C or exit",
    )
    start_cmd.add_argument("--owner-pid", type=int, help="stop Kafka automatically when this process dies")
    start_cmd.add_argument(
        "--keep",
        action="store_true",
        help="start the cluster formatted in --data-dir again with its topics and offsets (a broker restart)",
    )
    start_cmd.add_argument(
        "--timeout",
        type=float,
        default=START_TIMEOUT,
        help="seconds to wait for readiness",
    )

    for name, text in (
        ("stop", "stop the cluster in a data directory"),
        ("status", "show whether nodes are up"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--data-dir", type=Path, help=data_help)
    commands.add_parser("fetch", help="download the Kafka jars into the cache and exit")

    watchdog = commands.add_parser("_watchdog")
    watchdog.add_argument("--owner-pid", type=int, required=True)
    watchdog.add_argument("--owner-start", default="")
    watchdog.add_argument("--data-dir", type=Path, required=True)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    """Run one parsed command and return its exit code."""
    if args.command == "fetch":
        started = time.monotonic()
        path = fetch(_say)
        _say(f"Kafka {KAFKA_VERSION} jars ready in {time.monotonic() - started:.1f}s.")
        print(path)
        return 0
    if args.command == "start":
        cluster = start(
            port=args.port,
            nodes=args.nodes,
            data_dir=args.data_dir,
            owner_pid=args.owner_pid,
            controller_port=args.controller_port,
            timeout=args.timeout,
            foreground=args.foreground,
            log=_say,
            keep=args.keep,
        )
        _say(f"Kafka is up; stop it with: python {sys.argv[0]} stop --data-dir {cluster.data_dir}")
        print(cluster.bootstrap, flush=True)
        return _run_foreground(cluster) if args.foreground else 0
    if args.command == "stop":
        stopped = stop(args.data_dir)
        where = args.data_dir or default_data_dir()
        _say(f"Stopped {stopped} Kafka node(s) in {where}." if stopped else f"No Kafka node was running in {where}.")
        return 0
    if args.command == "status":
        all_up, lines = status(args.data_dir)
        for line in lines:
            print(line)
        return 0 if all_up else 3
    if args.command == "_watchdog":
        return run_watchdog(args.owner_pid, args.owner_start, args.data_dir.resolve())
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KafkaLocalError as error:
        print(error.message, file=sys.stderr)
        if error.details:
            print(error.details, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
