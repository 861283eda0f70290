"""Talking to Kafka for the benchmark: drive ``order.placed``, collect outcomes, count what was produced.

The orders are the envelopes the HTTP edge makes (``app/web/api.py::place_order``),
written straight into the orders topic, keyed by order id. Outcomes are read with a
``read_committed`` consumer, so under exactly-once an outcome counts when its
transaction commits, as any downstream reader would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from app.bench.stats import FINAL_TYPES, topic_kind, window_index
from app.gateway import SimulatedGateway
from schemas.registry import order_placed

OK_CARD = "4242424242424242"
USERS = 100
#: How long the outcome consumer lets the broker gather records for one fetch (see outcome_consumer).
OUTCOME_FETCH_WAIT_MS = 5
_FINAL_MARKS = tuple(t.encode() for t in FINAL_TYPES)


def product_id(prefix: str, k: int) -> str:
    """Return the id of product number ``k``."""
    return f"{prefix}-p{k:04d}"


def price_cents(k: int) -> int:
    """Return product ``k``'s unit price in cents, between 1.00 and 49.99."""
    return 100 + (k * 737) % 4900


@dataclass(frozen=True)
class PlacedOrder:
    """One order ready to send: everything but the timestamp, which is taken at send time."""

    order_id: str
    key: bytes
    payload: dict[str, Any]


def placed_orders(prefix: str, first: int, count: int, *, products: int, lines: int) -> list[PlacedOrder]:
    """Build orders ``first .. first+count-1``: ``lines`` distinct products each, spread over ``products``."""
    gateway = SimulatedGateway()
    out = []
    lines = max(1, min(lines, products))
    for i in range(first, first + count):
        order_id = str(uuid.uuid4())
        user = f"{prefix}-u{i % USERS:02d}"
        picks = sorted({(i * lines + j) % products for j in range(lines)})
        items: list[dict[str, Any]] = [
            {"product_id": product_id(prefix, k), "quantity": 1, "price_cents": price_cents(k)} for k in picks
        ]
        card = gateway.tokenize(OK_CARD)
        payload = {
            "order_id": order_id,
            "user_id": user,
            "user_email": f"{user}@example.com",
            "items": items,
            "total_cents": sum(int(it["price_cents"]) * int(it["quantity"]) for it in items),
            "currency": "USD",
            "payment": {"method": "card", "token": card.token, "last4": card.last4},
        }
        out.append(PlacedOrder(order_id, order_id.encode(), payload))
    return out


def placed_value(order: PlacedOrder) -> bytes:
    """Return the orjson ``order.placed`` envelope of ``order``, stamped now (what the HTTP edge makes)."""
    return orjson.dumps(order_placed(order.order_id, order.payload))


@dataclass
class Tally:
    """When each order was sent and when its outcome was read (``time.monotonic`` seconds)."""

    sent_at: dict[str, float] = field(default_factory=dict)
    done_at: dict[str, float] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    send_errors: int = 0
    on_outcome: Callable[[str], None] | None = None
    #: Keep outcomes of orders not (yet) sent: the HTTP load generator learns an order's id
    #: only from the POST's answer, which may come after the outcome was read.
    keep_early: bool = False
    early: dict[str, tuple[str, float]] = field(default_factory=dict)

    def expect(self, order_id: str, at: float) -> None:
        """Count ``order_id`` as sent at ``at``; an outcome already read for it counts now."""
        self.sent_at[order_id] = at
        early = self.early.pop(order_id, None)
        if early is not None:
            self.record(order_id, *early)

    def record(self, order_id: str, type_: str, at: float) -> None:
        """Count an outcome read at ``at`` (a second outcome of an order is a duplicate)."""
        if order_id not in self.sent_at:
            if self.keep_early:
                self.early[order_id] = (type_, at)
            return
        if order_id in self.done_at:
            self.duplicates += 1
            return
        self.done_at[order_id] = at
        self.outcome[order_id] = type_
        if self.on_outcome is not None:
            self.on_outcome(order_id)

    def reset(self) -> None:
        """Forget every order so far (late outcomes of forgotten orders are ignored)."""
        self.sent_at.clear()
        self.done_at.clear()
        self.outcome.clear()
        self.duplicates = 0
        self.send_errors = 0

    def latencies(self, order_ids: Sequence[str] | None = None) -> list[float]:
        """Return placed→final seconds of the completed orders (of ``order_ids`` when given)."""
        ids = self.done_at.keys() if order_ids is None else [o for o in order_ids if o in self.done_at]
        return [self.done_at[o] - self.sent_at[o] for o in ids]

    def outcomes(self) -> dict[str, int]:
        """Return completed orders by final type (``confirmed``, ``rejected``, ``cancelled``)."""
        return dict(Counter(t.split(".", 1)[1] for t in self.outcome.values()))


def producer(bootstrap: str, linger_ms: int = 5) -> AIOKafkaProducer:
    """Return a producer for the placed orders (not started)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        client_id="orderstream-bench",
    )


async def send_orders(
    prod: AIOKafkaProducer,
    topic: str,
    orders: Sequence[PlacedOrder],
    rate: float | None,
    tally: Tally,
    on_sent: Callable[[int], None] | None = None,
) -> None:
    """Send ``orders`` open-loop: order ``i`` at ``i / rate`` s after the first (flat out when None).

    The schedule never waits for answers; a send only waits for room in the producer's buffer.
    """

    def check(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            tally.send_errors += 1

    t0 = time.monotonic()
    i, n = 0, len(orders)
    while i < n:
        due = n if rate is None else min(n, int((time.monotonic() - t0) * rate) + 1)
        burst_end = min(due, i + 500)
        while i < burst_end:
            order = orders[i]
            fut = await prod.send(topic, placed_value(order), key=order.key)
            tally.sent_at[order.order_id] = time.monotonic()
            fut.add_done_callback(check)
            i += 1
        if on_sent is not None:
            on_sent(i)
        # Yield at least every burst, so the outcome reader keeps up while the sender catches up.
        delay = 0.0 if rate is None or i < due else t0 + i / rate - time.monotonic()
        await asyncio.sleep(max(0.0, delay))


async def collect_outcomes(consumer: AIOKafkaConsumer, tally: Tally, stop: asyncio.Event) -> None:
    """Read final order events from an assigned consumer into ``tally`` until ``stop`` is set."""
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
        now = time.monotonic()
        for records in batches.values():
            for rec in records:
                value = rec.value
                if not value or not any(mark in value for mark in _FINAL_MARKS):
                    continue
                try:
                    env = orjson.loads(value)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(env, dict) or env.get("type") not in FINAL_TYPES:
                    continue
                order_id = env.get("correlation_id") or env.get("entity_id")
                if isinstance(order_id, str):
                    tally.record(order_id, env["type"], now)


async def outcome_consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """Start a ``read_committed`` consumer on every partition of ``topic``, positioned at its end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
        client_id="orderstream-bench-outcomes",
        # At most one fetch per OUTCOME_FETCH_WAIT_MS: answered at once, every record fetched
        # (the default) costs the shared cores ~600 fetches a second at 700 orders/s, as much
        # broker and driver CPU as a worker's own consumer; the wait adds at most that to a latency.
        fetch_min_bytes=1 << 20,
        fetch_max_wait_ms=OUTCOME_FETCH_WAIT_MS,
    )
    await consumer.start()
    try:
        parts = await wait_for_partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # fix the positions now, before the first order is sent
            await consumer.position(tp)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def cluster_metadata(consumer: AIOKafkaConsumer) -> Any:
    """Return fresh metadata of every topic.

    ``AIOKafkaConsumer.topics()`` fetches it but keeps only the names, and
    ``partitions_for_topic`` knows only topics the consumer already follows.
    """
    return await consumer._client.fetch_all_metadata()


async def wait_for_partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float = 60.0) -> list[int]:
    """Return the partitions of ``topic``, waiting for it to exist."""
    deadline = time.monotonic() + timeout
    while True:
        parts = (await cluster_metadata(consumer)).partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} does not exist after {timeout:.0f} s")
        await asyncio.sleep(0.5)


# --- what was produced -------------------------------------------------------------------


async def app_partitions(bootstrap: str, app_id: str) -> dict[TopicPartition, str]:
    """Return every partition of the app's topics (events, changelogs, other) with its kind."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id="orderstream-bench-meta")
    await consumer.start()
    try:
        out: dict[TopicPartition, str] = {}
        cluster = await cluster_metadata(consumer)
        for topic in sorted(cluster.topics()):
            kind = topic_kind(topic, app_id)
            if kind is None:
                continue
            for p in sorted(cluster.partitions_for_topic(topic) or ()):
                out[TopicPartition(topic, p)] = kind
        return out
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, app_id: str) -> dict[TopicPartition, int]:
    """Return the high watermark of every partition of the app's topics (markers included)."""
    tps = list(await app_partitions(bootstrap, app_id))
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def catch_up(consumer: AIOKafkaConsumer, timeout: float = 10.0) -> bool:
    """Wait until the outcome consumer has read its partitions up to their (stable) end; ``False`` on timeout."""
    tps = list(consumer.assignment())
    ends = await consumer.end_offsets(tps)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        positions = [await consumer.position(tp) for tp in tps]
        if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
            return True
        await asyncio.sleep(0.05)
    return False


async def settle(
    bootstrap: str, app_id: str, *, quiet: float = 2.0, timeout: float = 120.0
) -> tuple[dict[TopicPartition, int], bool]:
    """Wait until the app's end offsets stop moving for ``quiet`` seconds (at most ``timeout``).

    Return the offsets and whether they did go quiet.
    """
    deadline = time.monotonic() + timeout
    last = await end_offsets(bootstrap, app_id)
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = await end_offsets(bootstrap, app_id)
        if now == last:
            return now, True
        last = now
    return last, False


@dataclass
class Counted:
    """Records and bytes read per topic and window."""

    records: Counter[tuple[str, int]] = field(default_factory=Counter)
    bytes: Counter[tuple[str, int]] = field(default_factory=Counter)
    incomplete: int = 0


async def read_produced(
    bootstrap: str,
    edges: Mapping[TopicPartition, Sequence[int]],
    isolation: str,
    idle: float = 3.0,
) -> Counted:
    """Read every record between each partition's first and last edge; count records and bytes per window.

    Bytes are key + value + header keys and values. Control records (transaction markers) are
    never returned by the client, so they are not counted here.
    """
    counted = Counted()
    todo = {tp: e for tp, e in edges.items() if e and e[-1] > e[0]}
    if not todo:
        return counted
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation,
        fetch_max_bytes=16 * 1024 * 1024,
        client_id="orderstream-bench-count",
    )
    await consumer.start()
    try:
        consumer.assign(list(todo))
        for tp, e in todo.items():
            consumer.seek(tp, e[0])
        remaining = set(todo)
        last_data = time.monotonic()
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=200, max_records=20_000)
            if any(batches.values()):
                last_data = time.monotonic()
            for tp, records in batches.items():
                e = todo[tp]
                for rec in records:
                    w = window_index(rec.offset, e)
                    if w is None:
                        continue
                    size = len(rec.key or b"") + len(rec.value or b"")
                    size += sum(len(k.encode()) + len(v or b"") for k, v in rec.headers or ())
                    counted.records[(tp.topic, w)] += 1
                    counted.bytes[(tp.topic, w)] += size
            for tp in list(remaining):
                if await consumer.position(tp) >= todo[tp][-1]:
                    remaining.discard(tp)
                    consumer.pause(tp)
            if remaining and time.monotonic() - last_data > idle:
                counted.incomplete = len(remaining)
                break
    finally:
        await consumer.stop()
    return counted


async def create_topics(bootstrap: str, names: Mapping[str, dict[str, str]], partitions: int) -> None:
    """Create topics (name → config) with ``partitions`` partitions; existing ones are kept."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        new = [NewTopic(n, partitions, 1, topic_configs=dict(c)) for n, c in names.items()]
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
    finally:
        await admin.close()
