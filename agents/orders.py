"""Orders: the saga that places, confirms, rejects, cancels, ships and delivers.

Consumes the orders topic (key: order id): ``order.placed``, per-line
``inventory.reserved``/``rejected``, ``payment.processed``/``failed``, the commands
``order.cancel``/``ship``/``deliver``, and the other stages' events about the order
(kept as history). Emits ``order.*`` events to the orders topic and commands to
inventory (reserve/release/commit per line, keyed by product), payments,
notifications and analytics. Tables: ``order_to_state``, ``order_to_history``,
``order_to_deadline``, ``partition_to_status_counts``.
A timer cancels reservations that were not paid within ``payment_timeout``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from faust.types import EventT, StreamT

from agents._wiring import dead_letter_sender, key_of, send
from app import metrics
from app.domain import analytics as analytics_domain
from app.domain import orders as domain
from app.domain.common import FINAL_STATUSES, ORDERS
from app.main import app, settings
from app.processing import Out, Stage, envelopes, run
from app.topics import orders_topic
from schemas.envelope import Envelope, derived_id, make
from tables import (
    local_items,
    order_records,
    order_to_deadline,
    order_to_history,
    order_to_state,
    partition_to_status_counts,
)

log = logging.getLogger("orderstream.orders")
STAGE = Stage("orders", ORDERS)


async def handle(env: Envelope, event: EventT) -> list[Out] | None:
    """Apply one input to its order: decide, save state and history, return what to send."""
    order_id = key_of(event) or env["correlation_id"]
    history: list[Envelope] = order_to_history.get(order_id) or []
    if any(h["id"] == env["id"] for h in history):
        return None  # our own event coming back, or a duplicate already applied
    state = order_to_state.get(order_id)
    decision = domain.decide(state, env, settings.payment_timeout)
    new_state = decision.state if decision.state is not None else state
    if new_state is None:
        log.info("ignoring %s for unknown order %s", env["type"], order_id)
        return None
    outs = envelopes(decision.emits, env)
    order_to_history[order_id] = [*history, env, *(e for t, _, e in outs if t == ORDERS)]
    if decision.state is not None:
        order_to_state[order_id] = decision.state
        old_status = state["status"] if state else None
        if old_status != decision.state["status"]:
            _count_status(event, old_status, decision.state["status"])
            if decision.state["status"] == "reserved":
                order_to_deadline[order_id] = decision.state["deadline"]
            elif old_status == "reserved":
                order_to_deadline.pop(order_id, None)
    return outs


def _count_status(event: EventT, old: str | None, new: str) -> None:
    key = str(event.message.partition)
    counts = partition_to_status_counts.get(key) or {}
    partition_to_status_counts[key] = analytics_domain.status_delta(counts, old, new)
    if new in FINAL_STATUSES and old not in FINAL_STATUSES:
        metrics.ORDER_OUTCOMES.labels(new).inc()


@app.agent(orders_topic)
async def run_order_saga(stream: StreamT[Any]) -> None:
    """Run the order saga over the orders topic."""
    await run(STAGE, stream, handle, store=order_records, send=send, send_dead_letter=dead_letter_sender(STAGE))


_timeout_sent: dict[str, float] = {}


@app.timer(interval=1.0)
async def cancel_unpaid_orders() -> None:
    """Cancel this worker's reserved orders whose payment deadline has passed."""
    now = time.time()
    for order_id, deadline in list(local_items(order_to_deadline)):
        if deadline > now:
            continue
        if now - _timeout_sent.get(order_id, 0.0) < 5.0:
            continue
        _timeout_sent[order_id] = now
        command = make(
            "order.cancel",
            "order",
            order_id,
            {"order_id": order_id, "reason": "payment_timeout"},
            correlation_id=order_id,
            event_id=derived_id(f"payment_timeout/{order_id}", 0),
        )
        await send(ORDERS, order_id, command)
    if len(_timeout_sent) > 10_000:
        _timeout_sent.clear()
