"""Redriving a dead letter whose original was already processed changes nothing, whatever its age.

Real workers and broker: an order is confirmed (counted by analytics, notified, its stock
sold) and a restock is applied; then dead letters naming those very messages are put on
the dead-letter topics (as a letter left behind by a failure that later healed would be)
and redriven. Stock, analytics and notifications stay exactly as they were.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from schemas.envelope import derived_id, make
from tests.e2e.test_dead_letters import all_dead_letters, topic
from tests.support import Cluster, eventually, http, order_body, uid

pytestmark = [pytest.mark.e2e]


def _letter(source: str, key: str, original: dict[str, Any], n: int) -> dict[str, Any]:
    dlq_id = derived_id(f"test/{source}/{key}/{n}", 0)
    payload = {
        "dlq_id": dlq_id,
        "stage": source.rsplit(".", 1)[1],
        "error": "a failure that healed later",
        "stack": "",
        "source_topic": source,
        "partition": 0,
        "offset": 10_000 + n,
        "key": key,
        "attempts": 1,
        "original": original,
        "original_kind": "json",
        "original_id": original["id"],
    }
    return dict(make("event.processing.failed", "dead_letter", dlq_id, payload, correlation_id=dlq_id, event_id=dlq_id))


async def _produce(bootstrap: str, records: list[tuple[str, str, dict[str, Any]]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for name, key, value in records:
            await producer.send_and_wait(name, orjson.dumps(value), key.encode())
    finally:
        await producer.stop()


def test_redriving_an_already_processed_letter_changes_nothing(make_cluster: Any, kafka_bootstrap: str) -> None:
    cluster: Cluster = make_cluster(2)
    product = uid("p")
    cluster.set_stock(product, 10)
    restock = dict(
        make("inventory.restock", "product", product, {"product_id": product, "quantity": 5}, correlation_id=product)
    )
    asyncio.run(_produce(kafka_bootstrap, [(topic(cluster, "inventory"), product, restock)]))
    eventually(lambda: cluster.get(f"/inventory/{product}").body["on_hand"] == 15, 30, what="restock applied")
    order_id = cluster.place(order_body([(product, 2, "3.00")]))
    assert cluster.final(order_id)["status"] == "confirmed"
    events = eventually(
        lambda: (
            (e := cluster.get(f"/orders/{order_id}/events").body["events"])
            and any(x["type"] == "notification.sent" for x in e)
            and any(x["type"] == "analytics.order_recorded" for x in e)
            and e
        ),
        30,
        what="the order's notification and analytics",
    )
    confirmed = next(e for e in events if e["type"] == "order.confirmed")
    stock_before = cluster.get(f"/inventory/{product}").body
    summary_before = cluster.get("/analytics/summary").body

    letters = [
        _letter(topic(cluster, "inventory"), product, restock, 1),
        _letter(topic(cluster, "orders"), order_id, confirmed, 2),
    ]
    asyncio.run(
        _produce(
            kafka_bootstrap,
            [
                (topic(cluster, "inventory.dlq"), letters[0]["id"], letters[0]),
                (topic(cluster, "orders.dlq"), letters[1]["id"], letters[1]),
            ],
        )
    )
    ids = {letter["id"] for letter in letters}
    eventually(lambda: ids <= {m["id"] for m in all_dead_letters(cluster)}, 30, what="the letters listed")
    resp = http("POST", cluster.urls[0] + "/dlq/redrive", {"ids": sorted(ids)})
    assert resp.status == 202 and resp.body["redriven"] == 2, resp
    eventually(
        lambda: (
            {m["id"]: m["status"] for m in all_dead_letters(cluster) if m["id"] in ids}
            == dict.fromkeys(ids, "redriven")
        ),
        30,
        what="the letters redriven",
    )
    # Give the redriven copies time to be handled (both stages commit within a second), then compare.
    eventually(lambda: _settled(cluster, order_id), 30, what="redriven copies handled")
    assert cluster.get(f"/inventory/{product}").body == stock_before
    summary = cluster.get("/analytics/summary").body
    assert summary["revenue"] == summary_before["revenue"]
    assert summary["orders_by_status"] == summary_before["orders_by_status"]
    after = cluster.get(f"/orders/{order_id}/events").body["events"]
    assert [e["type"] for e in after].count("notification.sent") == 1
    assert after == events


def _settled(cluster: Cluster, order_id: str) -> bool:
    """Both workers answer and have handled everything up to now (their lag is zero)."""
    for i in range(len(cluster.urls)):
        text = cluster.get("/metrics", i).raw.decode()
        lags = [line for line in text.splitlines() if line.startswith("orderstream_consumer_lag{")]
        if any(float(line.rsplit(" ", 1)[1]) > 0 for line in lags):
            return False
    return True
