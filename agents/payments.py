"""Payments: charge the card token through the gateway, off the partition's critical path.

Consumes the payments topic (key: order id): ``payment.charge`` (from the saga) and
``payment.refund``. A charge starts a gateway call in the background and the step moves
on; the charge's input offset is held (never committed past) until the call's result
comes back to the partition, is recorded in ``payment/<order>`` and goes to the orders
topic as ``payment.processed`` / ``payment.failed``. A worker that dies mid-call leaves
the offset uncommitted, so the partition's next owner reads the charge again and calls
the gateway again with the same idempotency key: never a double charge, nothing to scan
for. A repeated charge of a recorded payment re-sends the recorded result.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agents._wiring import on_partition, send
from app import metrics
from app.domain import payments as domain
from app.domain.common import ORDERS, PAYMENTS
from app.engine.step import Step
from app.gateway import PaymentGateway, SimulatedGateway
from app.main import engine, settings
from schemas.envelope import Envelope, derived_id, make
from tables import payment_record, put_payment_record

log = logging.getLogger("orderstream.payments")
STAGE = "payments"

gateway: PaymentGateway = SimulatedGateway()
_slots: asyncio.Semaphore | None = None


def _bound() -> asyncio.Semaphore:
    global _slots
    if _slots is None:
        _slots = asyncio.Semaphore(settings.gateway_concurrency)
    return _slots


async def charge(command: Envelope) -> Envelope:
    """Call the gateway (waiting for a slot counts toward ``gateway_timeout``) and build the result event."""
    p = command["payload"]
    try:
        async with asyncio.timeout(settings.gateway_timeout):
            await _bound().acquire()
    except TimeoutError:
        outcome: Any = domain.Declined("gateway_timeout")
        attempts = 0
    else:
        metrics.GATEWAY_INFLIGHT.inc()
        try:
            outcome, attempts = await domain.charge_with_retries(
                gateway,
                p,
                timeout=settings.gateway_timeout,
                max_attempts=settings.gateway_max_attempts,
                backoff=settings.gateway_backoff,
            )
        finally:
            metrics.GATEWAY_INFLIGHT.dec()
            _bound().release()
    type_, payload = domain.result_payload(p, outcome, attempts)
    metrics.GATEWAY_CALLS.labels(type_.split(".")[1]).inc()
    return make(
        type_,
        "payment",
        p["payment_id"],
        payload,
        correlation_id=p["order_id"],
        causation_id=command["id"],
        event_id=derived_id(command["id"], 0),
    )


def handle_charge(step: Step, env: Envelope) -> None:
    """Start the gateway call once per order; a repeat re-sends the recorded result."""
    order_id = on_partition(step, str(env["payload"]["order_id"]))
    record = payment_record(step, order_id)
    decision = domain.charge_requested(record, env)
    if decision.emits and record is not None:
        _forward(step, record["result"])
        return
    busy = f"charge/{order_id}"
    if decision.start_charge and busy not in step.inflight:
        step.start("charge", lambda: charge(env), key=busy)


def handle_result(step: Step, env: Envelope) -> None:
    """A gateway call came back (a local input): record the result and send it to the order."""
    order_id = str(env["payload"]["order_id"])
    record = payment_record(step, order_id)
    decision = domain.result_arrived(record, env)
    if decision.record is not None:
        put_payment_record(step, order_id, decision.record)
        _forward(step, env)
        p = env["payload"]
        if env["type"] == "payment.processed":
            log.info("charged %s cents %s for order %s", p.get("amount_cents"), p.get("currency"), order_id)
        else:
            log.info("payment of order %s failed: %s", order_id, p.get("reason"))


def handle_refund(step: Step, env: Envelope) -> None:
    """Give back a charge the order could not use (paid after it was cancelled)."""
    order_id = str(env["payload"]["order_id"])
    charge_id = domain.refund_of(payment_record(step, order_id), env)
    if charge_id is None:
        return

    async def refund() -> Envelope:
        await gateway.refund(charge_id, idempotency_key=f"refund/{charge_id}")
        return make("payment.refunded", "payment", order_id, {"order_id": order_id}, correlation_id=order_id)

    step.start("refund", refund)


def handle_refunded(step: Step, env: Envelope) -> None:
    """Record a refund the gateway confirmed (a local input)."""
    order_id = str(env["payload"]["order_id"])
    record = payment_record(step, order_id) or {"order_id": order_id}
    put_payment_record(step, order_id, {**record, "refunded": True})


def _forward(step: Step, result: Envelope) -> None:
    send(step, [(ORDERS, result["payload"]["order_id"], result)])


engine.route(STAGE, PAYMENTS, {"payment.charge"}, handle_charge)
engine.route(STAGE, PAYMENTS, {"payment.processed", "payment.failed"}, handle_result)
engine.route(STAGE, PAYMENTS, {"payment.refund"}, handle_refund)
engine.route(STAGE, PAYMENTS, {"payment.refunded"}, handle_refunded)
