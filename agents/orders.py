"""Orders: the saga that places, confirms, rejects, cancels, ships and delivers.

Consumes the orders topic (key: order id): ``order.placed``, per-line
``inventory.reserved``/``rejected``, ``payment.processed``/``failed``, the commands
``order.cancel``/``ship``/``deliver``, and the other stages' events about the order
(kept as history). Emits ``order.*`` events to the orders topic and commands to
inventory (reserve/release/commit per line, keyed by product), payments,
notifications and analytics. Tables: ``order_to_state`` (state, history and replay record in one value),
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
    event_to_outputs,
    local_items,
    order_to_deadline,
    order_to_state,
    partition_to_status_counts,
)

log = logging.getLogger("orderstream.orders")
STAGE = Stage("orders", ORDERS)


async def handle(env: Envelope, event: EventT) -> list[Out] | None:
    """Apply one input to its order: decide, save state and history, return what to send.

    State, history and the outputs of every applied input live in ONE record per order,
    written with one table write: after a crash the changelog holds either all of an
    input's effect or none of it, and a redelivered input re-sends exactly what it sent.
    """
    order_id = key_of(event) or env["correlation_id"]
    record = order_to_state.get(order_id)
    if record is not None:
        applied = record.get("_applied", {})
        if env["id"] in applied:
            return [(t, k, e) for t, k, e in applied[env["id"]]]  # a redelivered input
        if any(h["id"] == env["id"] for h in record.get("_history", ())):
            return None  # our own event coming back
    decision = domain.decide(_state_of(record), env, settings.payment_timeout)
    if record is None and decision.state is None:
        log.info("ignoring %s for unknown order %s", env["type"], order_id)
        return None
    outs = envelopes(decision.emits, env)
    old_status = record["status"] if record else None
    new_state = decision.state if decision.state is not None else _state_of(record)
    assert new_state is not None
    new_status = new_state["status"]
    if new_status == "reserved" and old_status != "reserved":
        order_to_deadline[order_id] = new_state["deadline"]
    order_to_state[order_id] = {
        **new_state,
        "_history": [*(record or {}).get("_history", []), env, *(e for t, _, e in outs if t == ORDERS)],
        "_applied": {**(record or {}).get("_applied", {}), env["id"]: [[t, k, e] for t, k, e in outs]},
    }
    if old_status != new_status:
        _count_status(event, old_status, new_status)
        if old_status == "reserved":
            order_to_deadline.pop(order_id, None)
    return outs


def _state_of(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The saga state without the history and replay bookkeeping."""
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in ("_history", "_applied")}


def history_of(order_id: str) -> list[Envelope]:
    """Return the order's events in causal order (empty if unknown)."""
    record = order_to_state.get(order_id)
    return list(record.get("_history", [])) if record else []


def _count_status(event: EventT, old: str | None, new: str) -> None:
    key = str(event.message.partition)
    counts = partition_to_status_counts.get(key) or {}
    partition_to_status_counts[key] = analytics_domain.status_delta(counts, old, new)
    if new in FINAL_STATUSES and old not in FINAL_STATUSES:
        metrics.ORDER_OUTCOMES.labels(new).inc()


@app.agent(orders_topic)
async def run_order_saga(stream: StreamT[Any]) -> None:
    """Run the order saga over the orders topic."""
    await run(STAGE, stream, handle, processed=event_to_outputs, send=send, send_dead_letter=dead_letter_sender(STAGE))


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
