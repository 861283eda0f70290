"""Dead letters: hostile input never crashes a worker and is never lost; redrive delivers once.

- Fuzz: malformed and hostile messages produced straight into every input topic,
  interleaved with good orders over HTTP. Every bad message reaches its stage's
  dead-letter topic exactly once, with its source topic, partition and offset and the
  original kept; every good order completes; the workers keep serving.
- Redrive: with the SMTP server down, confirmations dead-letter while orders still
  confirm; once it is up, ``POST /dlq/redrive`` (admin) delivers exactly one email
  per order, and redriving again delivers none.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from schemas.envelope import make
from scripts.kafka_local import free_port
from tests.support import Cluster, eventually, order_body, uid

pytestmark = [pytest.mark.e2e]

INPUT_TOPICS = ("orders", "inventory", "payments", "notifications", "analytics", "users")
#: Malformed messages produced into each input topic (``ORDERSTREAM_FUZZ_PER_TOPIC`` overrides).
BAD_PER_TOPIC = int(os.environ.get("ORDERSTREAM_FUZZ_PER_TOPIC", "1000"))
#: Messages of about 900 KB per topic: their dead letters (original + error + stack) still
#: fit Faust's producer_max_request_size of 1,000,000 bytes and keep the whole original.
HUGE_PER_TOPIC = 2
HUGE_BYTES = 900 * 1000
#: Messages just under the broker's message.max.bytes (1,048,588 by default) per topic:
#: their dead letters cannot hold them whole, so they keep a prefix and are never redriven.
OVERSIZED_PER_TOPIC = 1
OVERSIZED_BYTES = 1_040_000
GOOD_ORDERS = 24
#: Seconds the dead-letter topics may take to hold every bad message (about 15 s here).
DLQ_TIMEOUT = 420.0
SEED = 20240314

Key = bytes | None
Value = bytes | None


# --- helpers -----------------------------------------------------------------------------


def topic(cluster: Cluster, name: str) -> str:
    """The Kafka name of one of the app's logical topics."""
    return f"{cluster.workers[0].app_id}.{name}"


def holds(check: Callable[[], bool], duration: float, interval: float = 0.25, what: str = "") -> None:
    """Poll ``check`` for ``duration`` seconds and fail as soon as it is false."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert check(), f"no longer true: {what or check}"
        time.sleep(interval)


def all_dead_letters(
    cluster: Cluster, i: int = 0, query: str = "", headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every dead letter ``GET /dlq`` lists, following ``next_cursor`` (``headers``: the admin bearer, if set)."""
    out: list[dict[str, Any]] = []
    cursor = ""
    while True:
        resp = cluster.get(f"/dlq?limit=500&cursor={cursor}{query}", i, timeout=120, headers=headers)
        assert resp.status == 200, resp
        out.extend(resp.body["messages"])
        if not resp.body["next_cursor"]:
            return out
        cursor = resp.body["next_cursor"]


def assert_serving(cluster: Cluster) -> None:
    """Every worker process is alive, answers /health, and no agent crashed."""
    for w in cluster.workers:
        assert w.proc is not None and w.proc.poll() is None, f"worker {w.url} exited: {w.log_tail()}"
        assert cluster.get("/health", cluster.workers.index(w)).status == 200
        log = w.log_text()
        # Faust logs an agent that raised as "Crashed reason=..." and restarts it: the message is lost
        assert "Crashed reason" not in log and "Restarting dead <Agent" not in log, w.log_tail(80)


# --- what a well-formed message of each topic looks like ---------------------------------


def _env(type_: str, entity_type: str, entity_id: str, payload: dict[str, Any], version: int = 1) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": type_,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "timestamp": "2025-01-02T03:04:05.678Z",
        "version": version,
        "correlation_id": entity_id,
        "causation_id": None,
        "payload": payload,
        "metadata": {},
    }


def template(name: str, rng: random.Random, type_: str | None = None) -> tuple[bytes, dict[str, Any]]:
    """A well-formed message for topic ``name`` (of ``type_`` when given): ``(key, envelope)``."""
    order_id = f"ord_{rng.getrandbits(64):x}"
    product_id, user_id = f"fz-{rng.getrandbits(32):x}", f"fu{rng.getrandbits(32):x}"
    line = {"order_id": order_id, "product_id": product_id, "quantity": 2}
    items = [{"product_id": product_id, "quantity": 2, "price_cents": 1250}]
    payment_result = {
        "order_id": order_id,
        "payment_id": f"pay_{order_id}",
        "amount": "25.00",
        "amount_cents": 2500,
        "currency": "USD",
        "last4": "4242",
        "attempts": 1,
        "charge_id": "ch_1",
    }
    by_type: dict[str, tuple[str, dict[str, Any]]] = {
        # orders topic (key: order id)
        "order.placed": (
            order_id,
            _env(
                "order.placed",
                "order",
                order_id,
                {
                    "order_id": order_id,
                    "user_id": user_id,
                    "user_email": "fuzz@example.com",
                    "items": items,
                    "total_cents": 2500,
                    "currency": "USD",
                    "payment": {"method": "card", "token": "tok_ok_fuzz", "last4": "4242"},
                },
                version=2,
            ),
        ),
        "order.placed@1": (
            order_id,
            _env(
                "order.placed",
                "order",
                order_id,
                {
                    "order_id": order_id,
                    "user_id": user_id,
                    "items": [{"product_id": product_id, "quantity": 2, "price": 12.5}],
                    "total": 25.0,
                    "payment": {"method": "card", "token": "tok_ok_fuzz", "last4": "4242"},
                },
            ),
        ),
        "inventory.reserved": (order_id, _env("inventory.reserved", "product", product_id, dict(line))),
        "payment.processed": (order_id, _env("payment.processed", "payment", f"pay_{order_id}", payment_result)),
        "order.cancel": (order_id, _env("order.cancel", "order", order_id, {"order_id": order_id, "reason": "x"})),
        "notification.sent": (
            order_id,
            _env("notification.sent", "notification", order_id, {"order_id": order_id, "to": None}),
        ),
        "analytics.order_recorded": (
            order_id,
            _env("analytics.order_recorded", "order", order_id, {"order_id": order_id, "total_cents": 1}),
        ),
        # inventory topic (key: product id)
        "inventory.reserve": (product_id, _env("inventory.reserve", "product", product_id, dict(line))),
        "inventory.release": (product_id, _env("inventory.release", "product", product_id, dict(line))),
        "inventory.commit": (product_id, _env("inventory.commit", "product", product_id, dict(line))),
        "inventory.restock": (
            product_id,
            _env("inventory.restock", "product", product_id, {"product_id": product_id, "quantity": 3}),
        ),
        "inventory.set_stock": (
            product_id,
            _env("inventory.set_stock", "product", product_id, {"product_id": product_id, "on_hand": 3}),
        ),
        "inventory.restocked": (
            product_id,
            _env("inventory.restocked", "product", product_id, {"product_id": product_id, "delta": 3, "on_hand": 3}),
        ),
        # payments topic (key: order id)
        "payment.charge": (
            order_id,
            _env(
                "payment.charge",
                "payment",
                f"pay_{order_id}",
                {
                    "order_id": order_id,
                    "payment_id": f"pay_{order_id}",
                    "token": "tok_ok_fuzz",
                    "last4": "4242",
                    "amount_cents": 2500,
                    "currency": "USD",
                },
            ),
        ),
        "payment.refund": (
            order_id,
            _env("payment.refund", "payment", f"pay_{order_id}", {**payment_result, "reason": "order_cancelled"}),
        ),
        "payment.failed": (
            order_id,
            _env("payment.failed", "payment", f"pay_{order_id}", {**payment_result, "reason": "card_declined"}),
        ),
        # notifications topic (key: user id)
        "notification.send": (
            user_id,
            _env(
                "notification.send",
                "notification",
                order_id,
                {
                    "order_id": order_id,
                    "user_id": user_id,
                    "email": "fuzz@example.com",
                    "total": "25.00",
                    "currency": "USD",
                    "kind": "order_confirmed",
                },
            ),
        ),
        # analytics topic (key: order id)
        "analytics.record": (
            order_id,
            _env(
                "analytics.record",
                "order",
                order_id,
                {
                    "order_id": order_id,
                    "total_cents": 2500,
                    "currency": "USD",
                    "items": items,
                    "confirmed_at": "2025-01-02T03:04:05.678Z",
                },
            ),
        ),
        # users topic (key: user id)
        "user.created": (
            user_id,
            _env("user.created", "user", user_id, {"user_id": user_id, "email": "f@example.com"}),
        ),
        "user.updated": (user_id, _env("user.updated", "user", user_id, {"user_id": user_id, "name": "F"})),
    }
    primary = {
        "orders": "order.placed",
        "inventory": "inventory.reserve",
        "payments": "payment.charge",
        "notifications": "notification.send",
        "analytics": "analytics.record",
        "users": "user.created",
    }
    key, env = by_type[type_ or primary[name]]
    return key.encode(), env


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A payload mutation: set (or with ``...`` delete) the field at a dotted path (``items.0.quantity``)."""

    def mutate(payload: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = payload
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is ...:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _replace(new: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(payload: dict[str, Any]) -> None:
        payload.clear()
        payload.update(new)

    return mutate


#: Per input topic: (message type, mutation) pairs that leave a well-formed envelope with a
#: payload its reader cannot take: wrong types, missing required fields.
PAYLOAD_DEFECTS: dict[str, list[tuple[str, Callable[[dict[str, Any]], None]]]] = {
    "orders": [
        ("order.placed", _set("items", "abc")),
        ("order.placed", _set("items", [])),
        ("order.placed", _set("items", [1, 2])),
        ("order.placed", _set("items", ...)),
        ("order.placed", _set("items.0.product_id", 5)),
        ("order.placed", _set("items.0.quantity", "2")),
        ("order.placed", _set("items.0.quantity", "abc")),
        ("order.placed", _set("items.0.quantity", 1.5)),
        ("order.placed", _set("items.0.quantity", None)),
        ("order.placed", _set("items.0.price_cents", "12.50")),
        ("order.placed", _set("order_id", 123)),
        ("order.placed", _set("order_id", ...)),
        ("order.placed", _set("user_id", None)),
        ("order.placed", _set("payment", ...)),
        ("order.placed", _set("payment", "card")),
        ("order.placed", _set("payment.token", ...)),
        ("order.placed@1", _set("items", "abc")),
        ("order.placed@1", _set("items", ["x"])),
        ("order.placed@1", _set("items.0.price", "abc")),
        ("order.placed@1", _set("items.0.price", None)),
        ("order.placed@1", _set("items.0.quantity", "x")),
        ("inventory.reserved", _replace({})),
        ("inventory.reserved", _set("product_id", 5)),
        ("inventory.reserved", _set("quantity", "x")),
        ("inventory.reserved", _set("order_id", 7)),
        ("payment.processed", _set("order_id", 5)),
        ("payment.processed", _set("payment_id", ...)),
        ("order.cancel", _set("order_id", 5)),
        ("order.cancel", _set("reason", [])),
        ("notification.sent", _set("order_id", 9)),
        ("analytics.order_recorded", _set("total_cents", "x")),
    ],
    "inventory": [
        ("inventory.reserve", _set("quantity", "2")),
        ("inventory.reserve", _set("quantity", "x")),
        ("inventory.reserve", _set("quantity", None)),
        ("inventory.reserve", _set("order_id", 5)),
        ("inventory.reserve", _set("product_id", ...)),
        ("inventory.reserve", _replace({})),
        ("inventory.release", _set("order_id", ...)),
        ("inventory.commit", _set("quantity", [])),
        ("inventory.restock", _set("quantity", "5")),
        ("inventory.restock", _set("quantity", ...)),
        ("inventory.set_stock", _set("on_hand", "x")),
        ("inventory.set_stock", _set("on_hand", [])),
        ("inventory.restocked", _replace({})),
        ("inventory.restocked", _set("delta", "1")),
    ],
    "payments": [
        ("payment.charge", _set("amount_cents", "100")),
        ("payment.charge", _set("token", 5)),
        ("payment.charge", _set("order_id", 3)),
        ("payment.charge", _set("payment_id", ...)),
        ("payment.refund", _set("order_id", 5)),
        ("payment.refund", _replace({})),
        ("payment.processed", _set("order_id", ...)),
        ("payment.processed", _set("payment_id", 5)),
        ("payment.failed", _set("reason", 5)),
    ],
    "notifications": [
        ("notification.send", _set("order_id", ...)),
        ("notification.send", _set("order_id", 5)),
        ("notification.send", _set("email", 5)),
        ("notification.send", _set("user_id", [])),
        ("notification.send", _replace({})),
    ],
    "analytics": [
        ("analytics.record", _set("total_cents", "10")),
        ("analytics.record", _set("items", "x")),
        ("analytics.record", _set("items.0.quantity", "1")),
        ("analytics.record", _set("confirmed_at", "yesterday")),
        ("analytics.record", _set("order_id", 5)),
        ("analytics.record", _set("items", ...)),
    ],
    "users": [
        ("user.created", _set("email", 5)),
        ("user.created", _set("name", [])),
        ("user.created", _set("user_id", 5)),
        ("user.updated", _set("email", {})),
    ],
}

#: Per input topic: well-formed messages of types that never travel on it.
FOREIGN_TYPES = {
    "orders": ["inventory.reserve", "payment.charge", "notification.send", "analytics.record", "user.created"],
    "inventory": ["order.placed", "payment.charge", "inventory.reserved", "user.created", "analytics.record"],
    "payments": ["order.placed", "inventory.reserve", "order.cancel", "notification.send", "user.updated"],
    "notifications": ["order.placed", "notification.sent", "payment.charge", "user.created", "analytics.record"],
    "analytics": ["order.placed", "analytics.order_recorded", "inventory.commit", "payment.refund"],
    "users": ["order.placed", "inventory.restock", "notification.send", "payment.charge"],
}

ENVELOPE_DEFECTS: list[tuple[str, Any]] = [
    ("id", 12345),
    ("id", ""),
    ("id", None),
    ("type", 7),
    ("type", None),
    ("entity_id", None),
    ("entity_id", ["x"]),
    ("version", "2"),
    ("version", 1.5),
    ("version", True),
    ("version", None),
    ("payload", []),
    ("payload", "x"),
    ("payload", None),
    ("metadata", []),
    ("correlation_id", 5),
    ("causation_id", {}),
    ("entity_type", 3),
    ("timestamp", 12),
    ("timestamp", "yesterday"),
    ("timestamp", "2025-13-45T99:00:00Z"),
]


#: How often each kind of malformed message is drawn.
KIND_WEIGHTS = {
    "bytes": 8,  # random bytes
    "truncated": 8,  # a JSON envelope cut short
    "not_object": 4,  # valid JSON, not an object
    "missing": 6,  # an envelope without a required field
    "envelope": 12,  # an envelope field of the wrong type or an unreadable timestamp
    "type": 4,  # an unknown message type
    "version": 4,  # a version this reader does not know
    "foreign": 8,  # a well-formed message of a type that never travels on this topic
    "payload": 40,  # a well-formed envelope whose payload has wrong types or misses fields
    "empty": 2,  # a zero-length value
    "tombstone": 2,  # a null value
}


def _dump(env: Any) -> bytes:
    return json.dumps(env).encode()


def malformed(name: str, rng: random.Random) -> tuple[str, Key, Value]:
    """One message no reader of topic ``name`` can take: ``(kind, key, value)``."""
    key, env = template(name, rng)
    kind = rng.choices(
        list(KIND_WEIGHTS),
        weights=list(KIND_WEIGHTS.values()),
    )[0]
    if kind == "bytes":
        while True:
            raw = rng.randbytes(rng.randint(1, 300))
            try:
                if isinstance(orjson.loads(raw), dict):
                    continue
            except orjson.JSONDecodeError:
                pass
            return kind, rng.choice([key, None, rng.randbytes(8)]), raw
    if kind == "truncated":
        raw = _dump(env)
        return kind, key, raw[: rng.randint(1, len(raw) - 1)]
    if kind == "not_object":
        return kind, key, rng.choice([b"[]", b'"order.placed"', b"42", b"null", b"true", b"[" + _dump(env) + b"]"])
    if kind == "empty":
        return kind, key, b""
    if kind == "tombstone":
        return kind, key, None
    if kind == "missing":
        field = rng.choice(["id", "type", "entity_id", "version", "payload"])
        del env[field]
        return f"missing:{field}", key, _dump(env)
    if kind == "envelope":
        field, value = rng.choice(ENVELOPE_DEFECTS)
        env[field] = value
        return f"envelope:{field}={value!r}", key, _dump(env)
    if kind == "type":
        env["type"] = rng.choice(["order.exploded", "ORDER.PLACED", "", "inventory.", "payment.processed.v2"])
        return f"type:{env['type']}", key, _dump(_maybe_minimal(env, rng))
    if kind == "version":
        env["version"] = rng.choice([99, 0, -1, 2**31])
        if env["type"] == "order.placed":
            env["version"] = rng.choice([99, 3, 0, -1])
        return f"version:{env['version']}", key, _dump(_maybe_minimal(env, rng))
    if kind == "foreign":
        type_ = rng.choice(FOREIGN_TYPES[name])
        fkey, fenv = template(name, rng, type_)
        return f"foreign:{type_}", fkey, _dump(_maybe_minimal(fenv, rng))
    type_, mutate = rng.choice(PAYLOAD_DEFECTS[name])
    pkey, penv = template(name, rng, type_)
    mutate(penv["payload"])
    return f"payload:{type_}", pkey, _dump(_maybe_minimal(penv, rng))


def _maybe_minimal(env: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Sometimes keep only the five required envelope fields (a reader fills in the rest,
    but the dead letter must keep the message exactly as it came)."""
    if rng.random() < 0.3:
        for optional in ("entity_type", "timestamp", "correlation_id", "causation_id", "metadata"):
            env.pop(optional, None)
    return env


def huge(name: str, rng: random.Random, n: int, size: int = HUGE_BYTES) -> tuple[str, Key, Value]:
    """A message of about ``size`` bytes: a well-formed envelope with a bad payload, or a cut-off one."""
    key, env = template(name, rng)
    env["payload"]["blob"] = "x" * size
    if n % 2 == 0:
        env["payload"]["order_id" if name != "users" else "user_id"] = 404  # wrong type, short error
        return "huge:payload", key, _dump(env)
    return "huge:truncated", key, _dump(env)[:size]


# --- the fuzz test -------------------------------------------------------------------------


async def _flood(
    cluster: Cluster, bootstrap: str, rng: random.Random, products: list[str]
) -> tuple[list[tuple[str, str, int, int, Value]], list[str]]:
    """Produce the bad messages in rounds, placing a good order over HTTP between rounds."""
    from aiokafka import AIOKafkaProducer

    plan: list[tuple[str, str, Key, Value]] = []
    for name in INPUT_TOPICS:
        plan += [(name, *malformed(name, rng)) for _ in range(BAD_PER_TOPIC - HUGE_PER_TOPIC - OVERSIZED_PER_TOPIC)]
        plan += [(name, *huge(name, rng, n)) for n in range(HUGE_PER_TOPIC)]
        plan += [(name, "oversized", *huge(name, rng, n, OVERSIZED_BYTES)[1:]) for n in range(OVERSIZED_PER_TOPIC)]
    rng.shuffle(plan)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent: list[tuple[str, str, asyncio.Future[Any], Value]] = []
    good: list[str] = []
    try:
        rounds = [plan[i::GOOD_ORDERS] for i in range(GOOD_ORDERS)]
        for n, batch in enumerate(rounds):
            for name, kind, key, value in batch:
                sent.append((name, kind, await producer.send(topic(cluster, name), key=key, value=value), value))
            await producer.flush()
            body = order_body([(products[n % len(products)], 1, "3.10")], user_id=uid("gu"))
            good.append(await asyncio.to_thread(cluster.place, body, n % 2))
        out = []
        for name, kind, future, value in sent:
            meta = await future
            out.append((name, kind, meta.partition, meta.offset, value))
        return out, good
    finally:
        await producer.stop()


async def _collect_dead_letters(
    bootstrap: str, topics: list[str], expected: set[tuple[str, int, int]], timeout: float
) -> dict[tuple[str, int, int], list[dict[str, Any]]]:
    """Read the dead-letter topics until every expected source offset is there (or the deadline), then to their end."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    found: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)

    async def read_some() -> None:
        for records in (await consumer.getmany(timeout_ms=1000, max_records=2000)).values():
            for r in records:
                env = json.loads(r.value)
                if env["type"] == "event.processing.failed":
                    p = env["payload"]
                    found[(p["source_topic"], p["partition"], p["offset"])].append(p)

    async def behind() -> bool:
        parts = sorted(consumer.assignment())
        end = await consumer.end_offsets(parts)
        return any([await consumer.position(tp) < end[tp] for tp in parts])

    deadline = time.monotonic() + timeout
    try:
        while not expected <= found.keys() and time.monotonic() < deadline:
            await read_some()
        while await behind() and time.monotonic() < deadline + 60:
            await read_some()
        return found
    finally:
        await consumer.stop()


def test_fuzz_every_input_topic_nothing_crashes_nothing_is_lost(cluster2: Cluster, kafka_bootstrap: str) -> None:
    rng = random.Random(SEED)
    products = [uid("fp") for _ in range(3)]
    for p in products:
        cluster2.set_stock(p, 100)
    started = time.monotonic()

    produced, good = asyncio.run(_flood(cluster2, kafka_bootstrap, rng, products))
    assert len(produced) == BAD_PER_TOPIC * len(INPUT_TOPICS)
    expected = {(topic(cluster2, name), part, off): (kind, value) for name, kind, part, off, value in produced}
    assert len(expected) == len(produced)
    kinds = Counter(kind.split(":")[0] for _, kind, *_ in produced)

    # Every good order completes, in spite of the flood.
    for n, order_id in enumerate(good):
        assert cluster2.final(order_id, i=n % 2, timeout=300)["status"] == "confirmed"

    # Every bad message is in its stage's dead-letter topic, exactly once, with the original.
    dlq_topics = [topic(cluster2, f"{name}.dlq") for name in INPUT_TOPICS]
    found = asyncio.run(_collect_dead_letters(kafka_bootstrap, dlq_topics, set(expected), timeout=DLQ_TIMEOUT))
    missing = {k: expected[k][0] for k in expected.keys() - found.keys()}
    assert not missing, f"{len(missing)} bad messages never dead-lettered, e.g. {list(missing.items())[:10]}"
    extra = found.keys() - expected.keys()
    assert not extra, f"good messages were dead-lettered: {[found[k][0]['error'] for k in list(extra)[:5]]}"
    twice = {k: len(v) for k, v in found.items() if len(v) > 1}
    assert not twice, f"dead-lettered more than once: {list(twice.items())[:5]}"
    for (source, part, off), [letter] in found.items():
        kind, value = expected[(source, part, off)]
        assert letter["stage"] == source.rsplit(".", 1)[1], (kind, letter["stage"])
        assert letter["error"], kind
        if kind == "oversized":
            assert value is not None and letter["original_kind"] == "truncated"
            assert letter["original_bytes"] == len(value)
            assert value.startswith(letter["original"].encode())
        elif letter["original_kind"] == "json":
            assert letter["original"] == (orjson.loads(value) if value else None), kind
        else:
            assert letter["original"] == (value or b"").decode("utf-8", errors="replace"), kind

    # GET /dlq lists every one of them, across both workers.
    for i in (0, 1):
        listed = all_dead_letters(cluster2, i)
        assert len(listed) == len(expected)
        assert {(m["source_topic"], m["partition"], m["offset"]) for m in listed} == set(expected)
        assert {m["status"] for m in listed} == {"dead"}

    assert_serving(cluster2)
    for p in products:
        eventually(
            lambda p=p: cluster2.get(f"/inventory/{p}").body["reserved"] == 0, 60, what=f"{p} settled after the flood"
        )
    sold = sum(cluster2.get(f"/inventory/{p}").body["sold"] for p in products)
    assert sold == len(good)
    print(
        f"fuzz: {len(produced)} bad messages {dict(kinds)}, {len(good)} good orders, {time.monotonic() - started:.0f}s"
    )


# --- redrive ----------------------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[list[str], email.message.Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.original_content)))
        return "250 Message accepted for delivery"

    def by_message_id(self) -> Counter[str]:
        with self.lock:
            return Counter(str(m["Message-ID"]) for _, m in self.messages)

    def snapshot(self) -> list[tuple[list[str], email.message.Message]]:
        with self.lock:
            return list(self.messages)


def test_redrive_delivers_each_dead_lettered_confirmation_exactly_once(make_cluster: Any) -> None:
    from aiosmtpd.controller import Controller

    token = "redrive-" + uuid.uuid4().hex
    port = free_port()
    cluster: Cluster = make_cluster(
        2,
        env={
            "ORDERSTREAM_NOTIFIER": "smtp",
            "ORDERSTREAM_SMTP_URL": f"smtp://127.0.0.1:{port}",
            "ORDERSTREAM_ADMIN_TOKEN": token,
        },
    )
    auth = {"Authorization": f"Bearer {token}"}
    product = uid("p")
    assert cluster.put(f"/inventory/{product}", {"on_hand": 10}, headers=auth).status == 202
    eventually(lambda: cluster.get(f"/inventory/{product}").body["on_hand"] == 10, 30, what="stock set")

    # The SMTP server is down: every confirmation fails its bounded retries and dead-letters,
    # while the orders themselves still confirm.
    emails = {uid("u"): f"buyer{n}@example.com" for n in range(3)}
    orders = {
        cluster.place(order_body([(product, 1, "5.00")], user_id=user, email=address), i=n % 2): address
        for n, (user, address) in enumerate(emails.items())
    }
    for order_id in orders:
        assert cluster.final(order_id)["status"] == "confirmed"
    orders_topic = topic(cluster, "orders")

    def letters(i: int = 0) -> dict[str, dict[str, Any]]:
        return {m["original"]["payload"]["order_id"]: m for m in all_dead_letters(cluster, i, headers=auth)}

    dead = eventually(lambda: len(d := letters()) == len(orders) and d, 60, what="three dead-lettered confirmations")
    assert set(dead) == set(orders)
    for order_id, letter in dead.items():
        # the notifications stage consumes order.confirmed from the orders topic
        assert letter["source_topic"] == orders_topic
        assert letter["stage"] == "notifications"
        assert letter["status"] == "dead"
        assert letter["attempts"] == 3
        assert "smtp delivery" in letter["error"]
        assert letter["original"]["type"] == "order.confirmed"
        assert not any(
            e["type"] == "notification.sent" for e in cluster.get(f"/orders/{order_id}/events").body["events"]
        )
    assert letters(1) == dead

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        # admin only (reading them too)
        assert cluster.get("/dlq").status == 401
        assert cluster.post("/dlq/redrive", {}).status == 401
        assert cluster.post("/dlq/redrive", {}, i=1, headers={"Authorization": "Bearer wrong"}).status == 401
        assert inbox.snapshot() == []

        first = cluster.post("/dlq/redrive", {}, i=1, headers=auth)
        assert first.status == 202, first
        assert first.body["redriven"] == len(orders)
        assert sorted(first.body["ids"]) == sorted(m["id"] for m in dead.values())
        # a second request racing the first re-injects nothing new (at most the letters not yet marked)
        assert cluster.post("/dlq/redrive", {}, i=0, headers=auth).status == 202

        expected_ids = Counter(f"<{m['original']['id']}@orderstream>" for m in dead.values())
        eventually(lambda: inbox.by_message_id() == expected_ids, 60, what="one email per order")
        received = {m["Message-ID"]: (rcpt, m) for rcpt, m in inbox.snapshot()}
        for order_id, letter in dead.items():
            rcpt, message = received[f"<{letter['original']['id']}@orderstream>"]
            assert rcpt == [orders[order_id]]
            assert message["To"] == orders[order_id]
            assert order_id in message["Subject"]

        def all_redriven() -> bool:
            listed = letters(0)
            return set(listed) == set(orders) and all(
                m["status"] == "redriven" and m["redriven_at"] for m in listed.values()
            )

        eventually(all_redriven, 30, what="dead letters marked redriven")
        for order_id in orders:
            eventually(
                lambda o=order_id: any(
                    e["type"] == "notification.sent" for e in cluster.get(f"/orders/{o}/events").body["events"]
                ),
                30,
                what="notification.sent in the history",
            )

        # Redriving again sends nothing.
        again = cluster.post("/dlq/redrive", {}, headers=auth)
        assert again.status == 202
        assert again.body == {"redriven": 0, "ids": []}
        holds(lambda: inbox.by_message_id() == expected_ids, 8, what="still exactly one email per order")
        assert all_redriven()
        for order_id in orders:
            sent = [
                e for e in cluster.get(f"/orders/{order_id}/events").body["events"] if e["type"] == "notification.sent"
            ]
            assert len(sent) == 1
    finally:
        controller.stop()
    assert_serving(cluster)


def test_an_unreadable_message_on_a_dead_letter_topic_is_kept_listable_and_never_redriven(
    make_cluster: Any, kafka_bootstrap: str
) -> None:
    from aiokafka import AIOKafkaProducer

    cluster: Cluster = make_cluster(1)
    dlq_topic = topic(cluster, "orders.dlq")
    marker = uid("garbage")

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(dlq_topic, f"not json {marker}".encode(), b"k1")
            await producer.send_and_wait(dlq_topic, orjson.dumps({"type": "event.processing.failed", "x": marker}))
            # A well-formed envelope of a type that does not travel on a dead-letter topic
            # (probe 23: no route took it and it was dropped without a word).
            oid = uid("o")
            cancel = make("order.cancel", "order", oid, {"order_id": oid, "reason": marker}, correlation_id=oid)
            await producer.send_and_wait(dlq_topic, orjson.dumps(cancel), oid.encode())
        finally:
            await producer.stop()

    asyncio.run(produce())

    def kept() -> list[dict[str, Any]] | None:
        found = [m for m in all_dead_letters(cluster) if marker in json.dumps(m["original"])]
        return found if len(found) == 3 else None

    letters = eventually(kept, 60, what="the three messages listed")
    for letter in letters:
        assert letter["source_topic"] == dlq_topic and letter["status"] == "dead", letter
        assert letter["error"]
    assert sorted(m["original_kind"] for m in letters) == ["json", "json", "text"]
    assert any("does not travel on" in m["error"] for m in letters)
    resp = cluster.post("/dlq/redrive", {"ids": [m["id"] for m in letters]})
    assert resp.status == 202 and resp.body["redriven"] == 0, resp
    # The worker goes on: an order still confirms.
    product = uid("p")
    cluster.set_stock(product, 1)
    assert cluster.final(cluster.place(order_body([(product, 1, "1.00")])))["status"] == "confirmed"


# --- letters that could not be written, letters written by hand ------------------------------


def test_a_message_too_deep_to_write_again_is_dead_lettered_and_nothing_fetched_with_it_is_lost(
    make_cluster: Any, kafka_bootstrap: str
) -> None:
    """orjson reads 1,024 levels of nesting and writes 254: the letter about a 300-level message
    could not be written, and the three orders fetched with it were never placed (probe 17)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    cluster: Cluster = make_cluster(1)
    orders_topic = topic(cluster, "orders")
    product = uid("deep")
    cluster.set_stock(product, 10)
    marker = uid("poison")

    async def produce() -> tuple[int, int, list[str]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=200)
        await producer.start()
        try:
            partitions = sorted(await producer.partitions_for(orders_topic))
            part = DefaultPartitioner()(marker.encode(), partitions, partitions)
            order_ids: list[str] = []
            while len(order_ids) < 3:  # orders on the poison's partition: one fetch holds them all
                candidate = uid("ord_deep")
                if DefaultPartitioner()(candidate.encode(), partitions, partitions) == part:
                    order_ids.append(candidate)
            poison = (
                b'{"id": "' + marker.encode() + b'", "type": "order.placed", "deep": ' + b"[" * 300 + b"]" * 300 + b"}"
            )
            first = await producer.send(orders_topic, poison, marker.encode(), partition=part)
            for order_id in order_ids:
                items = [{"product_id": product, "quantity": 1, "price_cents": 250}]
                payload = {
                    "order_id": order_id,
                    "user_id": uid("du"),
                    "user_email": "deep@example.com",
                    "items": items,
                    "total_cents": 250,
                    "currency": "USD",
                    "payment": {"method": "card", "token": f"tok_ok_{uid()}", "last4": "4242"},
                }
                env = _env("order.placed", "order", order_id, payload, version=2)
                await producer.send(orders_topic, orjson.dumps(env), order_id.encode(), partition=part)
            meta = await first
            return meta.partition, meta.offset, order_ids
        finally:
            await producer.stop()

    part, offset, order_ids = asyncio.run(produce())
    for order_id in order_ids:
        assert cluster.final(order_id, timeout=60)["status"] == "confirmed"
    letters = eventually(
        lambda: [m for m in all_dead_letters(cluster) if (m["partition"], m["offset"]) == (part, offset)] or None,
        60,
        what="the deep message dead-lettered",
    )
    [letter] = letters
    assert letter["source_topic"] == orders_topic and letter["original_kind"] == "text"
    assert marker in letter["original"]
    assert "engine step failed" not in cluster.workers[0].log_text()
    assert_serving(cluster)


def test_letters_written_by_hand_onto_a_dead_letter_topic_never_break_listing_or_redrive(
    make_cluster: Any, kafka_bootstrap: str
) -> None:
    """A letter without a source topic made every ``GET /dlq?source_topic=`` a 503 and every
    redrive a 500; one naming a topic that is not the app's, a 500 on redrive (probe 17)."""
    from aiokafka import AIOKafkaProducer

    cluster: Cluster = make_cluster(1)
    dlq_topic = topic(cluster, "orders.dlq")
    fields = {"stage": "orders", "error": "forged", "partition": 0, "offset": 1, "original": {}}
    forged = {
        "no-source": {"error": "forged"},
        "foreign-source": {**fields, "source_topic": "evil.topic", "key": "k"},
        "int-key": {**fields, "source_topic": topic(cluster, "orders"), "key": 5},
    }
    ids = {name: uid(name) for name in forged}

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for name, payload in forged.items():
                env = _env("event.processing.failed", "dead_letter", ids[name], payload)
                await producer.send_and_wait(dlq_topic, orjson.dumps(env), ids[name].encode())
        finally:
            await producer.stop()

    asyncio.run(produce())
    ours = set(ids.values())

    def about(letter: dict[str, Any]) -> str:
        """The forged letter a listed one is, or is about."""
        original = letter.get("original")
        return letter["id"] if letter["id"] in ours else original.get("entity_id") if isinstance(original, dict) else ""

    def listed() -> list[dict[str, Any]] | None:
        found = [m for m in all_dead_letters(cluster) if about(m) in ours]
        return found if len(found) == 3 else None

    letters = {about(m): m for m in eventually(listed, 60, what="all three letters listed")}
    # The two a listing or redrive cannot read are kept as letters about themselves.
    for name in ("no-source", "int-key"):
        assert letters[ids[name]]["source_topic"] == dlq_topic, letters[ids[name]]
    assert letters[ids["foreign-source"]]["source_topic"] == "evil.topic"
    resp = cluster.get("/dlq?source_topic=orders&limit=500")
    assert resp.status == 200, resp
    resp = cluster.post("/dlq/redrive", {"ids": [m["id"] for m in letters.values()]})
    assert resp.status == 202 and resp.body["redriven"] == 0, resp
    resp = cluster.post("/dlq/redrive", {})
    assert resp.status == 202, resp
    assert_serving(cluster)


def test_a_confirmation_stamped_in_year_one_is_dead_lettered_and_its_partition_goes_on(
    make_cluster: Any, kafka_bootstrap: str
) -> None:
    """Probe 25: an ``analytics.record`` confirmed at ``0001-01-01T00:00:00+01:00`` (no UTC date)
    failed its handler after it had written; the commit then sent an empty changelog batch and
    failed, for ever: the partition read the record again and again, the worker stayed not
    ready, and the cluster's summary, lists and dead letters answered 503."""
    from aiokafka import AIOKafkaProducer

    cluster: Cluster = make_cluster(1)
    order_id = uid("year1")
    _key, env = template("analytics", random.Random(SEED))
    env = {**env, "entity_id": order_id, "correlation_id": order_id}
    env["payload"] = {**env["payload"], "order_id": order_id, "confirmed_at": "0001-01-01T00:00:00+01:00"}

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic(cluster, "analytics"), orjson.dumps(env), order_id.encode())
        finally:
            await producer.stop()

    asyncio.run(produce())

    def letter() -> dict[str, Any] | None:
        return next((m for m in all_dead_letters(cluster) if m["key"] == order_id), None)

    found = eventually(letter, 60, what="the confirmation dead-lettered")
    assert "before 2000" in found["error"], found
    product = uid("y1p")
    cluster.set_stock(product, 5)
    placed = cluster.place(order_body([(product, 1, "2.50")]))
    assert cluster.final(placed, timeout=60)["status"] == "confirmed"
    assert cluster.get("/ready").status == 200
    assert cluster.get("/analytics/summary").status == 200
    assert_serving(cluster)


def test_a_mail_server_that_never_answers_holds_up_no_order(make_cluster: Any) -> None:
    """Probe 25: an SMTP server that accepted connections and never answered held each
    confirmation's partition for 15.6 s (three 5 s attempts, in the step): every order behind
    it waited, 247 of 300 stayed pending for minutes. Delivery runs beside the step now; the
    confirmations still dead-letter when their attempts run out."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(100)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    port = listener.getsockname()[1]
    cluster: Cluster = make_cluster(
        1, env={"ORDERSTREAM_NOTIFIER": "smtp", "ORDERSTREAM_SMTP_URL": f"smtp://127.0.0.1:{port}"}
    )
    try:
        product = uid("p")
        cluster.set_stock(product, 100)
        started = time.monotonic()
        orders = [cluster.place(order_body([(product, 1, "2.00")], user_id=uid("u"))) for _ in range(12)]
        for order_id in orders:  # 4 partitions: 3 confirmations a partition held 15.6 s each before
            assert cluster.final(order_id, timeout=60)["status"] == "confirmed"
        assert time.monotonic() - started < 15, f"12 orders took {time.monotonic() - started:.1f} s"

        def letters() -> set[str]:
            return {m["original"]["payload"]["order_id"] for m in all_dead_letters(cluster)}

        eventually(lambda: set(orders) <= letters(), 90, what="every confirmation dead-lettered after its attempts")
        assert_serving(cluster)
    finally:
        stop.set()
        for conn in held:
            conn.close()
        listener.close()
