"""An order that makes a stage raise ends as a dead letter, never silently, and the partition goes on.

Real workers and broker. An ``order.placed`` put straight on the orders topic (the HTTP
edge refuses such prices) whose total passes 64-bit integers: the saga refuses it (past the
edge's bounds; before it checked them, its write of the order could not be encoded), so the
handler fails, its writes and outputs are rolled back, and the input is dead-lettered;
orders after it on the same partition confirm. (A write that cannot be encoded failing its
handler, not the commit: ``tests/unit/test_engine_store.py``.)
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from app.gateway import SimulatedGateway
from schemas.registry import order_placed
from tests.e2e.test_dead_letters import all_dead_letters, topic
from tests.e2e.test_redrive_processed import _produce
from tests.support import Cluster, eventually, http, partition_of, uid

pytestmark = [pytest.mark.e2e]


def test_an_order_past_64_bit_totals_is_dead_lettered_and_the_partition_goes_on(
    make_cluster: Any, kafka_bootstrap: str
) -> None:
    cluster: Cluster = make_cluster(2)
    product = uid("p")
    cluster.set_stock(product, 10)
    order_id = uid("huge")
    card = SimulatedGateway().tokenize("4242424242424242")
    payload = {
        "order_id": order_id,
        "user_id": "u1",
        "items": [{"product_id": product, "quantity": 8, "price_cents": 2**62}],  # total 2**65 cents
        "currency": "USD",
        "payment": {"method": "card", "token": card.token, "last4": card.last4},
    }
    placed = dict(order_placed(order_id, payload))
    asyncio.run(_produce(kafka_bootstrap, [(topic(cluster, "orders"), order_id, placed)]))
    letter = eventually(
        lambda: next((m for m in all_dead_letters(cluster) if m.get("original_id") == placed["id"]), None),
        60,
        what="the order.placed dead-lettered",
    )
    assert letter["stage"] == "orders" and letter["source_topic"] == topic(cluster, "orders")
    assert "past the bounds" in letter["error"], letter["error"]
    assert http("GET", f"{cluster.urls[0]}/orders/{order_id}").status == 404  # nothing of it was kept
    assert cluster.get(f"/inventory/{product}").body["reserved"] == 0  # nor sent on
    # A good order on the same partition, after it, is handled as usual.
    partitions = int(os.environ.get("ORDERSTREAM_TEST_PARTITIONS", "4"))
    same = next(
        o
        for o in (uid("good") for _ in range(10_000))
        if partition_of(o, partitions) == partition_of(order_id, partitions)
    )
    good = {**payload, "order_id": same, "items": [{"product_id": product, "quantity": 1, "price_cents": 200}]}
    asyncio.run(_produce(kafka_bootstrap, [(topic(cluster, "orders"), same, dict(order_placed(same, good)))]))
    assert cluster.final(same)["status"] == "confirmed"
    assert cluster.get(f"/orders/{same}").status == 200
