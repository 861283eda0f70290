"""Event history, time travel and schema evolution on the wire: real workers, a real broker.

- ``GET /orders/{id}/events`` of a confirmed order lists its events and commands in
  causal order, every ``causation_id`` after the first naming an event earlier in the
  same list; both workers answer the same list.
- ``GET /orders/{id}?as_of=T`` rebuilds the order at three instants taken from its
  own event timestamps.
- Stored v1 ``order.placed`` messages, produced straight onto the orders topic, are
  processed to ``confirmed`` with exact cents; unknown extra fields are ignored; a
  version this reader does not know is dead-lettered with its source offset.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from schemas.envelope import derived_id, parse_ts
from tests.crash import scan_topic
from tests.support import Cluster, eventually, order_body, uid

pytestmark = [pytest.mark.e2e]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "order_placed_v1"
HANGING_CARD = "4000000000000341"
#: A confirmed one-line order's history: every input the saga handled with the events and
#: commands it caused, then the two follow-ups of ``order.confirmed`` (in either order).
CONFIRMED_HISTORY = [
    "order.placed",
    "inventory.reserve",
    "inventory.reserved",
    "payment.charge",
    "payment.processed",
    "order.paid",
    "inventory.commit",
    "inventory.committed",
    "order.confirmed",
    "notification.sent",
    "analytics.order_recorded",
]


# --- helpers -------------------------------------------------------------------------


def events_of(cluster: Cluster, order_id: str, i: int = 0) -> list[dict[str, Any]]:
    """The order's history as worker ``i`` answers it (empty while unknown)."""
    resp = cluster.get(f"/orders/{order_id}/events", i)
    if resp.status == 404:
        return []
    assert resp.status == 200, resp
    assert resp.body["order_id"] == order_id
    return list(resp.body["events"])


def topic(cluster: Cluster, name: str) -> str:
    """The Kafka name of one of the app's logical topics."""
    return f"{cluster.workers[0].app_id}.{name}"


def is_derived(child_id: str, cause_id: str) -> bool:
    """Whether ``child_id`` is one of the ids :func:`derived_id` gives messages caused by ``cause_id``.

    A stage that shares its input with another (``order.confirmed``) derives from ``cause/stage``.
    """
    bases = [cause_id, *(f"{cause_id}/{stage}" for stage in ("notifications", "analytics"))]
    return any(derived_id(base, n) == child_id for base in bases for n in range(32))


async def produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes | None]]) -> list[Any]:
    """Produce ``(topic, key, value)`` records with a plain aiokafka producer; return their metadata."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(t, key=k, value=v) for t, k, v in records]
        return [await f for f in futures]
    finally:
        await producer.stop()


def ts(instant: datetime) -> str:
    """Format an instant as the ISO-8601 the API takes (URL-encoded)."""
    return urllib.parse.quote(instant.isoformat(timespec="milliseconds"))


def as_of(cluster: Cluster, order_id: str, instant: datetime, i: int = 0) -> Any:
    """``GET /orders/{id}?as_of=instant`` on worker ``i``."""
    return cluster.get(f"/orders/{order_id}?as_of={ts(instant)}", i)


def fresh_v1(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored v1 fixture with a fresh event id, order id and product ids; and the original (decimals exact)."""
    original = json.loads(path.read_text(), parse_float=Decimal)
    env = json.loads(path.read_text())
    order_id = f"ord_{uuid.uuid4().hex}"
    env["id"] = str(uuid.uuid4())
    env["entity_id"] = env["correlation_id"] = env["payload"]["order_id"] = order_id
    for item in env["payload"]["items"]:
        item["product_id"] = uid(f"{item['product_id']}-")
    return env, original


def place_on_topic(cluster: Cluster, bootstrap: str, env: dict[str, Any]) -> Any:
    """Produce an envelope to the orders topic as another service would, keyed by the order id."""
    key = env["payload"]["order_id"].encode()
    [meta] = asyncio.run(produce(bootstrap, [(topic(cluster, "orders"), key, json.dumps(env).encode())]))
    return meta


# --- the history of a confirmed order ------------------------------------------------


def test_history_of_a_confirmed_order_is_causal_and_the_same_on_both_workers(
    cluster2: Cluster, kafka_bootstrap: str
) -> None:
    product = uid("p")
    cluster2.set_stock(product, 5)
    order_id = cluster2.place(order_body([(product, 2, "12.50")]), i=1)
    assert cluster2.final(order_id)["status"] == "confirmed"

    # notification, commit and analytics come back after the confirmation
    events = eventually(
        lambda: (e := events_of(cluster2, order_id)) and len(e) >= len(CONFIRMED_HISTORY) and e,
        30,
        what="all seven events in the history",
    )
    types = [e["type"] for e in events]
    assert types[:9] == CONFIRMED_HISTORY[:9], types
    # the two follow-ups of the confirmation come from two stages: either order is causal
    assert sorted(types[9:]) == sorted(CONFIRMED_HISTORY[9:]), types
    assert len({e["id"] for e in events}) == len(events)
    for e in events:
        assert e["correlation_id"] == order_id
        assert set(e) >= {"id", "type", "entity_type", "entity_id", "timestamp", "version", "payload", "metadata"}
    assert events[0]["causation_id"] is None  # placed over HTTP: the first cause
    assert events[0]["id"] == derived_id(f"placed/{order_id}", 0)

    # Every event after the first names its cause, and the cause is earlier in the same list
    # (the commands sent to other stages are part of the history).
    earlier: dict[str, dict[str, Any]] = {events[0]["id"]: events[0]}
    for e in events[1:]:
        assert e["causation_id"] in earlier, f"{e['type']}: cause {e['causation_id']} is not earlier in the list"
        assert is_derived(e["id"], e["causation_id"]), f"{e['type']} is not derived from its cause"
        earlier[e["id"]] = e

    # Every event of the history is also on a topic (the commands on their stage's topic).
    names = [topic(cluster2, n) for n in ("orders", "inventory", "payments")]
    on_topics = {m["id"] for m in asyncio.run(scan_topic(kafka_bootstrap, names)) if isinstance(m, dict)}
    assert {e["id"] for e in events} <= on_topics

    # The same list, in the same order, from the other worker; and nothing more arrives.
    assert events_of(cluster2, order_id, 1) == events
    assert events_of(cluster2, order_id, 0) == events


def test_the_causes_of_http_commands_resolve_in_the_history_too(cluster2: Cluster) -> None:
    # order.cancel, order.ship and order.deliver came from HTTP with no cause: each was a
    # second root in the middle of the list (probe 16). Each now names the event the order
    # was at when the command was accepted.
    product = uid("p")
    cluster2.set_stock(product, 5)
    shipped = cluster2.place(order_body([(product, 1, "1.00")]))
    assert cluster2.final(shipped)["status"] == "confirmed"
    assert cluster2.post(f"/orders/{shipped}/ship", {"carrier": "UPS", "tracking_number": "1Z"}, i=1).status == 202
    assert cluster2.post(f"/orders/{shipped}/deliver", i=0).status == 202
    cancelled = cluster2.place(order_body([(product, 1, "1.00")], card=HANGING_CARD))
    eventually(lambda: cluster2.get(f"/orders/{cancelled}").body["status"] == "reserved", 20, what="reserved")
    assert cluster2.post(f"/orders/{cancelled}/cancel", i=1).status == 202
    # The gateway's failure comes 2 s later, after the order ended: it is the order's event too
    # (it was dropped from the history; probe 19), and the order reads as it did.
    eventually(
        lambda: "payment.failed" in {e["type"] for e in events_of(cluster2, cancelled)},
        30,
        what="the gateway's late failure in the history",
    )
    view = cluster2.get(f"/orders/{cancelled}").body
    assert (view["status"], view["reason"], view["payment"]["status"]) == (
        "cancelled",
        "customer_cancelled",
        "cancelled",
    )
    for order_id, command_types in (
        (shipped, {"order.ship", "order.deliver"}),
        (cancelled, {"order.cancel", "payment.failed"}),
    ):
        for i in (0, 1):
            events = events_of(cluster2, order_id, i)
            assert command_types <= {e["type"] for e in events}, [e["type"] for e in events]
            earlier = {events[0]["id"]}
            for e in events[1:]:
                assert e["causation_id"] in earlier, (
                    f"{e['type']}: cause {e['causation_id']} is not earlier in the list"
                )
                earlier.add(e["id"])


# --- time travel -----------------------------------------------------------------------


def test_as_of_rebuilds_the_order_at_three_instants(cluster2: Cluster) -> None:
    product = uid("p")
    cluster2.set_stock(product, 3)
    # The hanging card keeps the order reserved until the gateway timeout (2 s in cluster2).
    order_id = cluster2.place(order_body([(product, 2, "4.20")], card=HANGING_CARD))
    final = cluster2.final(order_id)
    assert (final["status"], final.get("reason")) == ("cancelled", "gateway_timeout")
    events = events_of(cluster2, order_id)  # read as it ended: the release is in, before the end
    at = {e["type"]: parse_ts(e["timestamp"]) for e in events}
    assert [e["type"] for e in events] == [
        "order.placed",
        "inventory.reserve",
        "inventory.reserved",
        "payment.charge",
        "payment.failed",
        "inventory.release",
        "inventory.released",
        "order.cancelled",
    ]
    assert at["order.placed"] < at["inventory.reserved"] < at["payment.failed"]
    # The end is caused by the failed payment that decided it, not by the release it waited for.
    by_type = {e["type"]: e for e in events}
    assert by_type["order.cancelled"]["causation_id"] == by_type["payment.failed"]["id"]

    def mid(a: datetime, b: datetime) -> datetime:
        return a + (b - a) / 2

    pending_at = mid(at["order.placed"], at["inventory.reserved"])
    reserved_at = mid(at["inventory.reserved"], at["payment.failed"])
    end_at = max(at.values())
    for i in (0, 1):
        before = as_of(cluster2, order_id, at["order.placed"] - timedelta(seconds=1), i)
        assert before.status == 404, before

        pending = as_of(cluster2, order_id, pending_at, i)
        assert pending.status == 200, pending
        assert pending.body["status"] == "pending"
        assert pending.body["total"] == "8.40"
        assert pending.body["updated_at"] == events[0]["timestamp"]

        reserved = as_of(cluster2, order_id, reserved_at, i)
        assert reserved.status == 200, reserved
        assert reserved.body["status"] == "reserved"
        assert reserved.body["payment"]["status"] == "charging"
        assert "reason" not in reserved.body

        end = as_of(cluster2, order_id, end_at, i)
        assert end.status == 200, end
        assert (end.body["status"], end.body["reason"]) == ("cancelled", "gateway_timeout")
        # rebuilt from the events, the end state is exactly the live read model
        assert {k: v for k, v in end.body.items() if k != "as_of"} == cluster2.get(f"/orders/{order_id}", i).body


# --- schema evolution on the topic ----------------------------------------------------


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_a_stored_v1_order_placed_on_the_topic_is_confirmed_with_exact_cents(
    cluster2: Cluster, kafka_bootstrap: str, path: Path
) -> None:
    env, original = fresh_v1(path)
    assert env["version"] == 1
    order_id = env["payload"]["order_id"]
    for item in env["payload"]["items"]:
        cluster2.set_stock(item["product_id"], 50)

    place_on_topic(cluster2, kafka_bootstrap, env)

    order = cluster2.final(order_id)
    assert order["status"] == "confirmed", order
    lines = original["payload"]["items"]
    expected_total = sum((Decimal(i["price"]) * i["quantity"] for i in lines), Decimal(0))
    assert order["total"] == f"{expected_total:.2f}"
    assert [(i["quantity"], i["price"]) for i in order["items"]] == [
        (i["quantity"], f"{i['price']:.2f}") for i in lines
    ]
    assert order["currency"] == "USD"
    assert order["payment"]["last4"] == original["payload"]["payment"]["last4"]
    placed = events_of(cluster2, order_id)[0]
    assert (placed["type"], placed["version"], placed["id"]) == ("order.placed", 2, env["id"])
    assert placed["payload"]["total_cents"] == int(expected_total * 100)
    for item in env["payload"]["items"]:
        eventually(
            lambda p=item["product_id"], q=item["quantity"]: cluster2.get(f"/inventory/{p}").body["sold"] == q,
            20,
            what="the v1 order's lines committed",
        )


def test_unknown_extra_fields_in_envelope_and_payload_are_ignored(cluster2: Cluster, kafka_bootstrap: str) -> None:
    product = uid("p")
    cluster2.set_stock(product, 5)
    order_id = f"ord_{uuid.uuid4().hex}"
    env = {
        "id": str(uuid.uuid4()),
        "type": "order.placed",
        "entity_type": "order",
        "entity_id": order_id,
        "timestamp": datetime.now().astimezone().isoformat(),
        "version": 2,
        "correlation_id": order_id,
        "causation_id": None,
        "payload": {
            "order_id": order_id,
            "user_id": uid("u"),
            "user_email": "new@example.com",
            "items": [{"product_id": product, "quantity": 3, "price_cents": 333, "gift_wrap": True}],
            "total_cents": 999,
            "currency": "EUR",
            "payment": {"method": "card", "token": f"tok_ok_{uuid.uuid4().hex}", "last4": "4242", "brand": "visa"},
            "loyalty": {"tier": "gold", "points": 120},
        },
        "metadata": {"source": "partner-api"},
        "schema_hints": ["from-the-future"],
        "trace": {"span": "abc", "sampled": True},
    }
    place_on_topic(cluster2, kafka_bootstrap, env)

    order = cluster2.final(order_id, i=1)
    assert order["status"] == "confirmed", order
    assert (order["total"], order["currency"]) == ("9.99", "EUR")
    assert order["items"] == [{"product_id": product, "quantity": 3, "price": "3.33"}]
    eventually(lambda: cluster2.get(f"/inventory/{product}").body["sold"] == 3, 20, what="committed")


def test_an_unknown_version_is_dead_lettered_with_its_source_offset(cluster2: Cluster, kafka_bootstrap: str) -> None:
    env, _ = fresh_v1(FIXTURES / "single_line_mug.json")
    env["version"] = 99
    order_id = env["payload"]["order_id"]
    meta = place_on_topic(cluster2, kafka_bootstrap, env)
    orders_topic = topic(cluster2, "orders")
    assert meta.topic == orders_topic

    def letter(i: int) -> dict[str, Any] | None:
        resp = cluster2.get(f"/dlq?source_topic={orders_topic}&limit=500", i)
        assert resp.status == 200, resp
        hits = [m for m in resp.body["messages"] if (m["partition"], m["offset"]) == (meta.partition, meta.offset)]
        return hits[0] if hits else None

    found = eventually(lambda: letter(0), 30, what="the v99 message in GET /dlq")
    assert found == eventually(lambda: letter(1), 10, what="the same dead letter through the other worker")
    assert found["source_topic"] == orders_topic
    assert found["stage"] == "orders"
    assert found["status"] == "dead"
    assert "unknown version 99" in found["error"]
    assert found["key"] == order_id
    assert found["original_id"] == env["id"]
    assert found["original"] == env  # kept as it came, ready to be redriven
    on_topic = [
        m["payload"]
        for m in asyncio.run(scan_topic(kafka_bootstrap, topic(cluster2, "orders.dlq")))
        if m["type"] == "event.processing.failed"
        and (m["payload"]["source_topic"], m["payload"]["partition"], m["payload"]["offset"])
        == (orders_topic, meta.partition, meta.offset)
    ]
    assert len(on_topic) == 1
    assert on_topic[0]["original"] == env

    # never guessed at: no order, and the workers still serve
    assert cluster2.get(f"/orders/{order_id}").status == 404
    for i in (0, 1):
        assert cluster2.get("/health", i).status == 200
    product = uid("p")
    cluster2.set_stock(product, 1)
    assert cluster2.final(cluster2.place(order_body([(product, 1, "1.00")]), i=1))["status"] == "confirmed"
