"""Test helpers: real worker processes, a small HTTP client, and waiting with a deadline."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.bench.procs import worker_command
from scripts.kafka_local import free_port

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

GOOD_CARD = "4242424242424242"
FINAL = {"confirmed", "rejected", "cancelled", "shipped", "delivered"}


class Timeout(AssertionError):
    """A condition did not become true before its deadline."""


def eventually(check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Poll ``check`` until it returns a truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.005, what: str = ""
) -> T:
    """:func:`eventually` inside an event loop: the loop runs on between the checks."""
    deadline = time.monotonic() + timeout
    while not (last := check()):
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")
        await asyncio.sleep(interval)
    return last


@dataclass
class Response:
    """An HTTP answer."""

    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes = b""


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 40.0,
) -> Response:
    """Make one HTTP request and decode a JSON answer (never raises on 4xx/5xx)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        payload, status, hdrs = err.read(), err.code, dict(err.headers)
    try:
        decoded = json.loads(payload) if payload else None
    except ValueError:
        decoded = payload.decode(errors="replace")
    return Response(status, decoded, hdrs, payload)


def order_body(
    items: Iterable[tuple[str, int, str]],
    *,
    user_id: str = "u1",
    card: str = GOOD_CARD,
    email: str | None = "buyer@example.com",
) -> dict[str, Any]:
    """Build a ``POST /orders`` body from ``(product_id, quantity, price)`` lines."""
    body: dict[str, Any] = {
        "user_id": user_id,
        "items": [{"product_id": p, "quantity": q, "price": price} for p, q, price in items],
        "payment": {"method": "card", "card_number": card, "expiry": "12/34", "cvv": "123"},
    }
    if email:
        body["user_email"] = email
    return body


def partition_of(key: str, partitions: int) -> int:
    """The partition ``key`` goes to: the Java client's default partitioner, as the workers use it."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def offline_engine(datadir: Path, partitions: int) -> Any:
    """An :class:`~app.engine.runtime.Engine` never started (no broker): for unit tests of its parts."""
    from app.engine.runtime import Engine

    return Engine(
        app_id="t",
        bootstrap="127.0.0.1:1",
        partitions=partitions,
        exactly_once=True,
        commit_interval=0.0,
        datadir=datadir,
        linger_ms=2,
        session_timeout_ms=10_000,
        decode=lambda value, topic: value,
        dead_letter=lambda *args, **kw: None,
    )


async def messages_of(
    order_id: str, topics: list[str], bootstrap: str
) -> list[tuple[str, dict[str, Any], dict[str, bytes]]]:
    """``(topic, envelope, headers)`` of every message on ``topics`` whose correlation id is ``order_id``."""
    import orjson
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        out = []
        for _ in range(20):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    env = orjson.loads(r.value)
                    if env.get("correlation_id") == order_id:
                        out.append((r.topic, env, dict(r.headers)))
        return out
    finally:
        await consumer.stop()


def uid(prefix: str = "t") -> str:
    """Return a short unique id for products, users and apps."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class Worker:
    """One ``faust -A app worker`` subprocess."""

    app_id: str
    broker: str
    datadir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    nofile: int | None = None  # the process's limit on open files (soft and hard), when set
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        """Base URL of this worker."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Worker:
        """Start the process (a new log file per start)."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.log_path = self.datadir.parent / f"{self.datadir.name}.{self.starts}.log"
        env = {
            **os.environ,
            "ORDERSTREAM_BROKER": self.broker,
            "ORDERSTREAM_APP_ID": self.app_id,
            "ORDERSTREAM_PARTITIONS": os.environ.get("ORDERSTREAM_TEST_PARTITIONS", "4"),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        cmd = worker_command(self.port, self.datadir)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._limits
            )
        return self

    def _limits(self) -> None:
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def ready(self) -> bool:
        """Whether ``/ready`` answers 200."""
        try:
            return http("GET", self.url + "/ready", timeout=2).status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 90.0) -> Worker:
        """Wait until the worker is ready."""
        eventually(lambda: self._alive_check() and self.ready(), timeout, 0.25, what=f"worker {self.url} ready")
        return self

    def _alive_check(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}; log: {self.log_tail()}")
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and wait for the process to end."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then hard."""
        self.kill(signal.SIGTERM)

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the current log."""
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_text(self) -> str:
        """Return every log of this worker so far."""
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.datadir.parent.glob(f"{self.datadir.name}.*.log"))
        )


@dataclass
class Cluster:
    """Several workers of one app (one consumer group, unique topics)."""

    workers: list[Worker]

    @property
    def urls(self) -> list[str]:
        """Base URLs of all workers."""
        return [w.url for w in self.workers]

    def wait_ready(self, timeout: float = 120.0) -> Cluster:
        """Wait until every worker is ready and they agree on the membership."""
        for w in self.workers:
            w.wait_ready(timeout)

        def settled() -> bool:
            views = [http("GET", u + "/cluster", timeout=5).body for u in self.urls]
            return all(v and v["ready"] and len(v["workers"]) == len(self.workers) for v in views)

        eventually(settled, timeout, 0.5, what="cluster membership settled")
        return self

    def stop(self) -> None:
        """Stop every worker."""
        for w in self.workers:
            w.kill(signal.SIGKILL)

    def get(self, path: str, i: int = 0, **kw: Any) -> Response:
        """GET ``path`` from worker ``i``."""
        return http("GET", self.urls[i] + path, **kw)

    def post(self, path: str, body: Any = None, i: int = 0, **kw: Any) -> Response:
        """POST ``body`` to ``path`` on worker ``i``."""
        return http("POST", self.urls[i] + path, body, **kw)

    def put(self, path: str, body: Any = None, i: int = 0, **kw: Any) -> Response:
        """PUT ``body`` to ``path`` on worker ``i``."""
        return http("PUT", self.urls[i] + path, body, **kw)

    def set_stock(self, product_id: str, on_hand: int, i: int = 0, headers: dict[str, str] | None = None) -> None:
        """Set stock (``headers``: e.g. an admin token) and wait until it is visible."""
        resp = eventually(
            lambda: (
                (r := self.put(f"/inventory/{product_id}", {"on_hand": on_hand}, i, headers=headers)).status == 202
                and r
            ),
            30,
            0.25,
            what=f"PUT stock {product_id}",
        )
        assert resp
        eventually(
            lambda: self.get(f"/inventory/{product_id}", i).body.get("on_hand") == on_hand,
            30,
            what=f"stock of {product_id} visible",
        )

    def place(self, body: dict[str, Any], i: int = 0, key: str | None = None) -> str:
        """Place an order and return its id."""
        headers = {"Idempotency-Key": key} if key else None
        resp = self.post("/orders", body, i, headers=headers)
        assert resp.status == 202, resp
        return str(resp.body["order_id"])

    def final(self, order_id: str, i: int = 0, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the order to reach a final state and return it."""

        def check() -> dict[str, Any] | None:
            r = self.get(f"/orders/{order_id}?wait=5", i)
            return r.body if r.status == 200 and r.body["status"] in FINAL else None

        return eventually(check, timeout, 0.2, what=f"order {order_id} final")


async def set_max_message_bytes(bootstrap: str, topic: str, value: int) -> None:
    """Set a topic's ``max.message.bytes`` (a small one makes the broker refuse what is sent to it)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(value)})]
        )
    finally:
        await admin.close()
