"""One order is one trace: the W3C traceparent rides the Kafka headers from the HTTP edge through every stage.

A real worker exports its spans with the console exporter (one JSON object per line in
its log); the test reads them back and checks that every stage's span of the order
shares the HTTP edge's trace id, with parent links.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.support import eventually, messages_of, order_body, partition_of, uid

pytestmark = [pytest.mark.e2e]

#: The app's topics an order's messages go through.
ORDER_TOPICS = ("orders", "inventory", "payments", "notifications", "analytics")

STAGES = {"http", "orders", "inventory", "payments", "notifications", "analytics"}


def _spans(log: str, order_id: str) -> list[dict[str, Any]]:
    spans = []
    for line in log.splitlines():
        if not line.startswith('{"name"'):
            continue
        try:
            span = json.loads(line)
        except ValueError:
            continue
        if span.get("attributes", {}).get("orderstream.order_id") == order_id:
            spans.append(span)
    return spans


def test_an_order_is_one_trace_across_every_stage(make_cluster: Any) -> None:
    cluster = make_cluster(1, env={"ORDERSTREAM_TRACE_EXPORTER": "console"})
    worker = cluster.workers[0]
    product = uid("p")
    cluster.set_stock(product, 5)
    order_id = cluster.place(order_body([(product, 1, "4.00")]))
    assert cluster.final(order_id)["status"] == "confirmed"

    def complete() -> list[dict[str, Any]] | None:
        spans = _spans(worker.log_text(), order_id)
        stages = {s["attributes"]["orderstream.stage"] for s in spans}
        return spans if stages >= STAGES else None

    spans = eventually(complete, 30, 0.5, what="a span from every stage in the log")
    traces = {s["context"]["trace_id"] for s in spans}
    assert len(traces) == 1, {s["name"]: s["context"]["trace_id"] for s in spans}
    ids = {s["context"]["span_id"] for s in spans}
    roots = [s for s in spans if s.get("parent_id") is None]
    assert [r["attributes"]["orderstream.stage"] for r in roots] == ["http"]
    assert all(s["parent_id"] in ids for s in spans if s.get("parent_id") is not None)
    types = {s["attributes"]["orderstream.event_type"] for s in spans}
    assert {"order.placed", "inventory.reserve", "payment.charge", "payment.processed", "order.confirmed"} <= types


def test_with_the_exporter_off_every_message_of_an_order_carries_its_trace(
    make_cluster: Any, kafka_bootstrap: str
) -> None:
    """SPEC: a W3C traceparent in Kafka headers from the HTTP edge through every stage, the exporter
    off by default — while it was off, no message carried one (probe 19)."""
    cluster = make_cluster(1)
    app_id = cluster.workers[0].app_id
    product = uid("p")
    cluster.set_stock(product, 5)
    # The client's own trace goes on (its traceparent was ignored; probe 19).
    client_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    resp = cluster.post(
        "/orders", order_body([(product, 1, "4.00")]), headers={"traceparent": f"00-{client_trace}-00f067aa0ba902b7-01"}
    )
    assert resp.status == 202, resp
    order_id = resp.body["order_id"]
    assert cluster.final(order_id)["status"] == "confirmed"
    topics = [f"{app_id}.{name}" for name in ORDER_TOPICS]

    def all_of_them() -> list[tuple[str, dict[str, Any], dict[str, bytes]]] | None:
        found = asyncio.run(messages_of(order_id, topics, kafka_bootstrap))
        types = {env["type"] for _, env, _ in found}
        return found if {"order.confirmed", "notification.sent", "analytics.order_recorded"} <= types else None

    found = eventually(all_of_them, 60, 1, what="the order's messages on every topic")
    assert {topic for topic, _, _ in found} >= {topics[0], topics[1], topics[2]}
    missing = [env["type"] for _, env, headers in found if "traceparent" not in headers]
    assert not missing, missing
    traces = {headers["traceparent"][3:35] for _, _, headers in found}
    assert traces == {client_trace.encode()}, traces


def test_a_dead_letter_and_its_redrive_carry_on_the_trace_of_the_message_that_failed(
    make_cluster: Any, kafka_bootstrap: str
) -> None:
    """Letters went out with no header at all, and a redriven original with none (the trace ended
    at the failure): now the letter and the redriven message carry the failed message's trace."""
    import orjson
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from schemas.envelope import make

    cluster = make_cluster(1)
    app_id = cluster.workers[0].app_id
    trace = "0af7651916cd43dd8448eb211c80319c"
    traceparent = f"00-{trace}-b7ad6b7169203331-01".encode()
    order_id = uid("o")
    # No stage knows this type: the orders stage dead-letters it; redriven, it fails again (and
    # is kept again), which is enough to see what the re-injected copy carries.
    bad = dict(make("order.unheard_of", "order", order_id, {"order_id": order_id}, correlation_id=order_id))
    orders, letters = f"{app_id}.orders", f"{app_id}.orders.dlq"

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                orders, orjson.dumps(bad), order_id.encode(), headers=[("traceparent", traceparent)]
            )
        finally:
            await producer.stop()

    async def read(topic: str) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            out = []
            for _ in range(6):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend((orjson.loads(r.value), dict(r.headers)) for r in records)
            return out
        finally:
            await consumer.stop()

    asyncio.run(produce())

    def letter() -> tuple[dict[str, Any], dict[str, bytes]] | None:
        found = [
            (env, headers)
            for env, headers in asyncio.run(read(letters))
            if env.get("type") == "event.processing.failed" and env["payload"].get("original_id") == bad["id"]
        ]
        return found[0] if found else None

    env, headers = eventually(letter, 60, 1, what="the dead letter on the orders dead-letter topic")
    assert headers.get("traceparent", b"")[3:35] == trace.encode(), headers
    listed = eventually(
        lambda: [m for m in cluster.get("/dlq?limit=500").body["messages"] if m["id"] == env["entity_id"]],
        30,
        what="the letter listed",
    )
    assert listed[0]["traceparent"][3:35] == trace, listed

    resp = cluster.post("/dlq/redrive", {"ids": [env["entity_id"]]})
    assert resp.status == 202 and resp.body["redriven"] == 1, resp

    def copies() -> list[dict[str, bytes]] | None:
        found = [headers for e, headers in asyncio.run(read(orders)) if e.get("id") == bad["id"]]
        return found if len(found) == 2 else None

    original, redriven = eventually(copies, 60, 1, what="the redriven copy on the orders topic")
    assert original["traceparent"] == traceparent
    assert redriven.get("traceparent", b"")[3:35] == trace.encode(), redriven


def test_a_cancel_started_by_a_deadline_carries_on_the_order_s_trace(make_cluster: Any, kafka_bootstrap: str) -> None:
    """A payment timeout's cancel (no message of the order arrives: the gateway hangs) started a
    new trace; now it carries on the one the order was placed in."""
    cluster = make_cluster(1, env={"ORDERSTREAM_PAYMENT_TIMEOUT": "1", "ORDERSTREAM_GATEWAY_TIMEOUT": "30"})
    app_id = cluster.workers[0].app_id
    product = uid("p")
    cluster.set_stock(product, 5)
    client_trace = "5bf92f3577b34da6a3ce929d0e0e4737"
    resp = cluster.post(
        "/orders",
        order_body([(product, 1, "4.00")], card="4000000000000341"),  # the gateway never answers
        headers={"traceparent": f"00-{client_trace}-00f067aa0ba902b7-01"},
    )
    assert resp.status == 202, resp
    order_id = resp.body["order_id"]
    final = cluster.final(order_id)
    assert (final["status"], final.get("reason")) == ("cancelled", "payment_timeout"), final
    topics = [f"{app_id}.{name}" for name in ORDER_TOPICS]

    def ended() -> list[tuple[str, dict[str, Any], dict[str, bytes]]] | None:
        found = asyncio.run(messages_of(order_id, topics, kafka_bootstrap))
        types = {env["type"] for _, env, _ in found}
        return found if {"order.cancelled", "inventory.released"} <= types else None

    found = eventually(ended, 60, 1, what="the order's cancel and release")
    traces = {env["type"]: headers.get("traceparent", b"")[3:35] for _, env, headers in found}
    assert set(traces.values()) == {client_trace.encode()}, traces
    # And its history stays one causal chain: the cancel names the input the order waited on
    # since (it named none; probe 22).
    events = cluster.get(f"/orders/{order_id}/events").body["events"]
    ids = {e["id"] for e in events}
    assert [e["type"] for e in events if e["causation_id"] not in ids] == ["order.placed"], events


def test_a_request_forwarded_to_the_owner_of_its_key_keeps_the_client_s_trace(
    make_cluster: Any, kafka_bootstrap: str
) -> None:
    """A command sent to the worker that does not own the order was proxied without its
    ``traceparent`` (probe 21): its message started a new trace."""
    cluster = make_cluster(2, env={"ORDERSTREAM_GATEWAY_TIMEOUT": "30"})
    app_id = cluster.workers[0].app_id
    product = uid("p")
    cluster.set_stock(product, 5)
    order_id = cluster.place(order_body([(product, 1, "4.00")], card="4000000000000341"))  # stays reserved
    eventually(lambda: cluster.get(f"/orders/{order_id}").body.get("status") == "reserved", 30, what="reserved")
    partition = partition_of(order_id, 8)
    owners = {w["url"].rstrip("/"): w["partitions"] for w in cluster.get("/cluster").body["workers"]}
    other = next(i for i, url in enumerate(cluster.urls) if partition not in owners[url.rstrip("/")])
    client_trace = "6cf92f3577b34da6a3ce929d0e0e4738"
    resp = cluster.post(
        f"/orders/{order_id}/cancel", {}, other, headers={"traceparent": f"00-{client_trace}-00f067aa0ba902b7-01"}
    )
    assert resp.status == 202, resp

    def cancel() -> dict[str, bytes] | None:
        found = asyncio.run(messages_of(order_id, [f"{app_id}.orders"], kafka_bootstrap))
        return next((headers for _, env, headers in found if env["type"] == "order.cancel"), None)

    headers = eventually(cancel, 60, 1, what="the order.cancel on the orders topic")
    assert headers.get("traceparent", b"")[3:35] == client_trace.encode(), headers
