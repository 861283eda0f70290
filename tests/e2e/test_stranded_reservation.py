"""A reservation that never answers cannot strand an order: it is rejected at its deadline, every line released.

Real broker, two real worker processes. A dead-lettered ``inventory.reserve`` is, for the
saga, a reservation that never answers; nothing a client can send makes the inventory
stage dead-letter a reserve the saga emits (the HTTP edge and the saga refuse every line
it would refuse), so this test makes one line's answer wait the way an outage does: the
worker owning that product's inventory partition is frozen (SIGSTOP, with a session
timeout long enough that its partitions stay put). The order's own partition and the
other line's stay on the running worker. At the pending deadline the order is rejected
(``reservation_timeout``) and every line is released, the unanswered one too; when the
frozen worker resumes, the late reservation is given straight back. Stock ends where it started.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from app.domain.orders import keyed_order_id
from tests.support import Cluster, eventually, order_body, partition_of, uid

pytestmark = [pytest.mark.e2e]


def _owned(cluster: Cluster) -> list[set[int]]:
    """Partitions each worker (in ``cluster.workers`` order) owns, as the cluster sees it."""
    view = cluster.get("/cluster").body
    by_url = {w["url"].rstrip("/"): set(w["partitions"]) for w in view["workers"]}
    return [by_url.get(w.url, set()) for w in cluster.workers]


def _pick(prefix: str, partitions: int, want: set[int]) -> str:
    return next(k for k in (uid(prefix) for _ in range(10_000)) if partition_of(k, partitions) in want)


def test_an_order_whose_reservation_never_answers_is_rejected_with_every_line_released(
    make_cluster: Any, kafka_bootstrap: str
) -> None:
    cluster = make_cluster(2, env={"ORDERSTREAM_PENDING_TIMEOUT": "3", "ORDERSTREAM_SESSION_TIMEOUT": "60"})
    owned = eventually(lambda: (lambda o: o if all(o) else None)(_owned(cluster)), 30, what="both own partitions")
    n = len(owned[0] | owned[1])
    frozen = cluster.workers[1]
    held, stalled = _pick("pa", n, owned[0]), _pick("pb", n, owned[1])
    for product in (held, stalled):
        cluster.set_stock(product, 10)
    user = uid("u")
    key = next(
        k
        for k in (uid("k") for _ in range(10_000))
        if partition_of(keyed_order_id(user, k), n) in owned[0]  # the order lands on a partition of worker 0
    )

    assert frozen.proc is not None
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        order_id = cluster.place(order_body([(held, 2, "5.00"), (stalled, 3, "5.00")], user_id=user), 0, key=key)
        state = cluster.final(order_id, 0, timeout=30)
        assert (state["status"], state.get("reason")) == ("rejected", "reservation_timeout"), state
        # The line the order held is given back while the other worker is still frozen.
        eventually(
            lambda: cluster.get(f"/inventory/{held}", 0).body.get("reserved") == 0, 15, what="held line released"
        )
    finally:
        frozen.proc.send_signal(signal.SIGCONT)

    # The late reservation is released as soon as its answer reaches the rejected order (the
    # history stops at the final status; the inventory stage's answers are on the orders topic).
    answers = asyncio.run(_answers(kafka_bootstrap, f"{frozen.app_id}.orders", order_id, stalled))
    assert answers[:1] == ["inventory.reserved"] and "inventory.released" in answers, answers

    def stock(product: str) -> tuple[Any, Any]:
        body = cluster.get(f"/inventory/{product}", 0).body
        return body.get("on_hand"), body.get("reserved")

    eventually(lambda: [stock(held), stock(stalled)] == [(10, 0), (10, 0)], 30, what="every line released")

    def released() -> list[str]:
        events = cluster.get(f"/orders/{order_id}/events", 0).body["events"]
        return sorted(e["payload"]["product_id"] for e in events if e["type"] == "inventory.release")

    # The releases are in the order's history: at the deadline both lines (the unanswered one
    # too: its answer may be lost), and the stalled line again when its late answer came.
    eventually(lambda: released() == sorted([held, stalled, stalled]), 15, what="every release in the history")
    assert cluster.get(f"/orders/{order_id}", 0).body["status"] == "rejected"  # the late answer changed nothing else


async def _answers(bootstrap: str, topic: str, order_id: str, product: str, timeout: float = 30.0) -> list[str]:
    """The inventory stage's answers about ``product`` for ``order_id``, once it was released (or the deadline)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while "inventory.released" not in seen and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    env = orjson.loads(record.value)
                    p = env.get("payload") or {}
                    if p.get("order_id") == order_id and p.get("product_id") == product:
                        seen.append(env["type"])
    finally:
        await consumer.stop()
    return seen
