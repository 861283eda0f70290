"""With ``log_format=json`` every log line of a placed→confirmed order is JSON and names the order.

A real worker writes its log as JSON lines; after one order is confirmed, the lines that
a stage logged while handling one of the order's events are found by their ``order_id``
field, every line parses, every stage (saga, inventory, payments, notifications, analytics)
wrote one, and each stage's line carries ``event_id``, ``event_type``, ``stage``,
``partition`` and ``offset``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import eventually, order_body, uid

pytestmark = [pytest.mark.e2e]


def test_every_log_line_of_an_order_is_json_and_carries_its_order_id(make_cluster: Any) -> None:
    cluster = make_cluster(1, env={"ORDERSTREAM_LOG_FORMAT": "json"})
    worker = cluster.workers[0]
    product = uid("p")
    cluster.set_stock(product, 5)
    order_id = cluster.place(order_body([(product, 1, "4.00")]))
    assert cluster.final(order_id)["status"] == "confirmed"

    def lines_of_the_order() -> list[dict[str, Any]] | None:
        records = []
        for line in worker.log_text().splitlines():
            if order_id not in line:
                continue
            records.append(json.loads(line))  # every line about the order is one JSON object
        stages = {r.get("stage") for r in records}
        return records if {"orders", "inventory", "payments", "notifications", "analytics"} <= stages else None

    # Every stage the order went through logged a line while handling it (probe 25: only the
    # notifications stage did; an order could not be followed through the stages in the log).
    records = eventually(lines_of_the_order, 30, 0.5, what="a line of every stage about the order")
    assert records
    for record in records:
        if "stage" in record:  # logged while a stage handled one of the order's events
            assert record["order_id"] == order_id
            assert {"event_id", "event_type", "stage", "partition", "offset", "correlation_id"} <= set(record)
            # A gateway result is no Kafka record: its line carries the offset of the
            # payment.charge that started the call (probe 27: it was -1).
            assert record["offset"] >= 0, record
    # Down to the last line of a clean stop: an aiohttp client session left open was reported on
    # stderr as it was collected ("Exception ignored in ... ClientSession.__del__", a traceback; probe 18).
    assert cluster.get("/analytics/summary").status == 200  # gathered over the worker-to-worker session
    worker.stop()
    tail = [line for line in worker.log_text().splitlines()[-200:] if line.strip()]
    not_json = [line for line in tail if not line.startswith("{")]
    assert not not_json, not_json[:5]
    assert "Unclosed client session" not in worker.log_text()


def test_a_dead_lettering_line_carries_the_event_s_fields(make_cluster: Any, kafka_bootstrap: str) -> None:
    """The one WARNING an operator looks for when a message fails names it as every stage line does."""
    import asyncio

    from tests.e2e.test_dead_letters import topic
    from tests.e2e.test_redrive_processed import _produce

    cluster = make_cluster(1, env={"ORDERSTREAM_LOG_FORMAT": "json"})
    worker = cluster.workers[0]
    order_id = uid("o")
    bad = {"id": uid("ev"), "type": "order.no_such_type", "version": 1, "correlation_id": order_id, "payload": {}}
    asyncio.run(_produce(kafka_bootstrap, [(topic(cluster, "orders"), order_id, bad)]))

    def dead_lettering() -> dict[str, Any] | None:
        for line in worker.log_text().splitlines():
            if "dead-lettering" in line and order_id in line:  # the order id is in the line's fields
                return dict(json.loads(line))
        return None

    record = eventually(dead_lettering, 60, 0.5, what="the dead-lettering line")
    assert record["level"] == "WARNING"
    assert record["event_id"] == bad["id"] and record["event_type"] == "order.no_such_type", record
    assert record["order_id"] == order_id and record["stage"] == "orders", record
    assert isinstance(record["partition"], int) and isinstance(record["offset"], int), record
