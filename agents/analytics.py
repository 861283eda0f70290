"""Analytics: revenue and orders in one-minute tumbling windows, and top products.

Consumes the analytics topic (key: order id): ``analytics.record`` for each
confirmed order. Emits ``analytics.order_recorded`` to the orders topic. Table:
``partition_to_analytics`` (one partial aggregate per partition; the summary adds
them up across the cluster).
"""

from __future__ import annotations

from typing import Any

from faust.types import EventT, StreamT

from agents._wiring import dead_letter_sender, send
from app.domain import analytics as domain
from app.domain.common import ANALYTICS, ORDERS, Emit
from app.main import app
from app.processing import Out, PermanentError, Stage, envelopes, run
from app.topics import analytics_topic
from schemas.envelope import Envelope
from tables import analytics_records, partition_to_analytics

STAGE = Stage("analytics", ANALYTICS)


async def handle(env: Envelope, event: EventT) -> list[Out] | None:
    """Add one confirmed order to this partition's aggregate."""
    if env["type"] != "analytics.record":
        raise PermanentError(f"analytics does not handle {env['type']!r}")
    key = str(event.message.partition)
    partial = partition_to_analytics.get(key) or domain.empty_partial()
    partition_to_analytics[key] = domain.record(partial, env["payload"])
    p = env["payload"]
    recorded = {"order_id": p["order_id"], "total_cents": p["total_cents"], "currency": p.get("currency")}
    return envelopes([Emit(ORDERS, p["order_id"], "analytics.order_recorded", "order", p["order_id"], recorded)], env)


@app.agent(analytics_topic)
async def record_order(stream: StreamT[Any]) -> None:
    """Run the analytics stage over the analytics topic."""
    await run(STAGE, stream, handle, store=analytics_records, send=send, send_dead_letter=dead_letter_sender(STAGE))
