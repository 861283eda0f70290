"""Orders: the saga that places, pays, confirms, rejects, cancels, ships and delivers.

Consumes the orders topic (key: order id): ``order.placed``, the per-line
``inventory.reserved`` / ``rejected`` / ``committed`` / ``released``, ``payment.processed``
/ ``failed``, and the commands ``order.cancel`` / ``ship`` / ``deliver``. Emits ``order.*``
events to the orders topic and commands to inventory (reserve, release, commit per line,
keyed by product) and payments. Table: ``order_records`` — one history entry per handled
input (the input, what it caused, the state after it). A timer rejects orders still
``pending`` at their deadline, cancels ``reserved`` ones unpaid after ``payment_timeout``,
and ends an order whose releases did not all answer within ``pending_timeout``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agents._wiring import envelopes, on_partition, order_id_of, send
from app import metrics, tracing
from app.domain import orders as domain
from app.domain.common import FINAL_STATUSES, ORDERS
from app.engine.runtime import Engine
from app.engine.step import Step
from app.main import engine, settings
from schemas.envelope import Envelope, parse_ts
from tables import append_order, due_deadlines, last_input_id, latest_order

STAGE = "orders"
log = logging.getLogger("orderstream.orders")
INPUTS = frozenset(
    {
        "order.placed",
        "inventory.reserved",
        "inventory.rejected",
        "inventory.committed",
        "inventory.released",
        "payment.processed",
        "payment.failed",
        "order.cancel",
        "order.ship",
        "order.deliver",
    }
)


def handle(step: Step, env: Envelope) -> None:
    """Apply one input to its order: decide, append the history entry, send what it caused."""
    order_id = on_partition(step, order_id_of(env))
    latest = latest_order(step, order_id)
    state = latest[1] if latest else None
    domain.admit(env)  # an order.placed past the edge's bounds is dead-lettered
    if state is not None and env["type"] in PAYMENT_ANSWERS and not domain.asked_for(state, env):
        return  # an answer for a payment this order did not ask for (yet): never refunded
    decision = domain.decide(state, env, settings.payment_timeout, settings.pending_timeout, time.time())
    new_state = decision.state if decision.state is not None else state
    if new_state is None or (decision.state is None and not decision.emits):
        return  # unknown order, or nothing changes (a duplicate, a late answer)
    if state is None:
        # The trace the order was placed in: what its deadline later starts (a timeout's cancel,
        # when no message of the order arrives) carries it on.
        new_state = {**new_state, "trace": tracing.current_traceparent()}
    outs = envelopes(decision.emits, env)
    events: list[dict[str, Any]] = [dict(env), *(dict(e) for _, _, e in outs)]
    append_order(step, order_id, latest, events, new_state)
    send(step, outs)
    old_status = state["status"] if state else None
    status = new_state["status"]
    if status != old_status:
        # Where an order ends (and ships, is delivered) at info; the steps on the way at debug.
        level = logging.INFO if status in FINAL_STATUSES else logging.DEBUG
        if log.isEnabledFor(level):
            reason = new_state.get("reason")
            log.log(level, "order %s %s%s", order_id, status, f" ({reason})" if reason else "")
    if status in FINAL_STATUSES and old_status not in FINAL_STATUSES:
        metrics.ORDER_OUTCOMES.labels(status).inc()
        with_latency(new_state)


def with_latency(state: dict[str, Any]) -> None:
    """Observe placed→final latency for an order that just became final."""
    try:
        seconds = parse_ts(state["updated_at"]).timestamp() - parse_ts(state["created_at"]).timestamp()
    except (KeyError, ValueError):
        return
    metrics.observe_order_latency(state["status"], max(seconds, 0.0))


def expire_due(eng: Engine) -> None:
    """Hand every order whose deadline passed to its partition's saga as a local cancel command."""
    now = time.time()
    for task in list(eng.tasks.values()):
        if not task.ready or not eng.replayed(task):
            continue  # restored, its inputs not read again yet: its state may be older than what it sent
        for order_id, status in due_deadlines(task.step.db, now):
            latest = latest_order(task.step, order_id)
            if latest is None or not due(latest[1], status, now):
                # The deadline index is the committed one: an input handled since (a cancel this
                # timer sent, not yet committed) moved the order on (probe 24: a cancel sent
                # again, caused by itself, while commits failed).
                continue
            trace = tracing.headers_of(latest[1].get("trace"))
            cause = last_input_id(task.step, order_id, latest[0])
            command = domain.deadline_cancel(order_id, status, cause=cause)
            task.local.append((ORDERS, command, None, -1, trace))
    eng.wake()


def due(state: dict[str, Any], status: str, now: float) -> bool:
    """Whether the order, as the step sees it now, is still past the deadline the index listed under ``status``."""
    deadline = state.get("deadline")
    return deadline is not None and deadline <= now and domain.deadline_status(state) == status


PAYMENT_ANSWERS = frozenset({"payment.processed", "payment.failed"})

engine.route(STAGE, ORDERS, INPUTS, handle)
engine.every(1.0, expire_due)
