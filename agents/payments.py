"""Payments: charge the card token through the gateway, off the partition's critical path.

Consumes the payments topic (key: order id): ``payment.charge`` (from the saga),
``payment.refund``, and the ``payment.processed`` / ``payment.failed`` results that
finished gateway calls send back here. A charge starts a background gateway call
under a concurrency bound and the agent moves on at once, so a hanging gateway
never stalls other orders; the result comes back as an event, is recorded in
``order_to_payment`` and forwarded to the orders topic. A timer restarts charges a
crashed worker left in flight (same idempotency key, so never a double charge).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any

from faust.types import EventT, StreamT

from agents._wiring import dead_letter_sender, key_of, send
from app import metrics
from app.domain import payments as domain
from app.domain.common import PAYMENTS
from app.gateway import PaymentGateway, SimulatedGateway
from app.main import app, settings
from app.processing import Out, PermanentError, Stage, envelopes, run
from app.topics import payments_topic
from schemas.envelope import Envelope, derived_id, make
from tables import local_items, order_to_payment, payment_records

log = logging.getLogger("orderstream.payments")
STAGE = Stage("payments", PAYMENTS)

gateway: PaymentGateway = SimulatedGateway()
_inflight: dict[str, asyncio.Task[None]] = {}
_semaphore: asyncio.Semaphore | None = None


def _bound() -> asyncio.Semaphore:
    global _semaphore
    if _semaphore is None:
        _semaphore = asyncio.Semaphore(settings.gateway_concurrency)
    return _semaphore


async def _charge(command: Envelope) -> None:
    """Call the gateway and send the result back to the payments topic."""
    p = command["payload"]
    async with _bound():
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
    type_, payload = domain.result_payload(p, outcome, attempts)
    metrics.GATEWAY_CALLS.labels(type_.split(".")[1]).inc()
    result = make(
        type_,
        "payment",
        p["payment_id"],
        payload,
        correlation_id=p["order_id"],
        causation_id=command["id"],
        event_id=derived_id(command["id"], 0),
    )
    await send(PAYMENTS, p["order_id"], result)


def _start(command: Envelope) -> None:
    order_id = command["payload"]["order_id"]
    if order_id in _inflight and not _inflight[order_id].done():
        return
    # A fresh context: the call must not inherit the stream's current event, or its
    # result would be sent inside a transaction of a partition we may no longer own.
    task = asyncio.get_running_loop().create_task(_guarded(command), context=contextvars.Context())
    _inflight[order_id] = task
    task.add_done_callback(lambda _t: _inflight.pop(order_id, None))


async def _guarded(command: Envelope) -> None:
    try:
        await _charge(command)
    except Exception:
        log.exception("gateway call for order %s failed; will be retried", command["payload"]["order_id"])


async def handle(env: Envelope, event: EventT) -> list[Out] | None:
    """Start charges, record results, forward results to the order."""
    order_id = key_of(event) or env["correlation_id"]
    record = order_to_payment.get(order_id)
    type_ = env["type"]
    if type_ == "payment.charge":
        decision = domain.charge_requested(record, env)
    elif type_ in ("payment.processed", "payment.failed"):
        decision = domain.result_arrived(record, env)
    elif type_ == "payment.refund":
        charge_id = env["payload"].get("charge_id")
        if charge_id:
            await gateway.refund(charge_id, idempotency_key=f"refund/{charge_id}")
        if record is not None:
            order_to_payment[order_id] = {**record, "refunded": True}
        return None
    else:
        raise PermanentError(f"payments does not handle {type_!r}")
    if decision.record is not None:
        order_to_payment[order_id] = {**decision.record, "updated": time.time()}
    if decision.start_charge:
        _start(env)
    return envelopes(decision.emits, env)


@app.agent(payments_topic)
async def charge_payment(stream: StreamT[Any]) -> None:
    """Run the payments stage over the payments topic."""
    await run(STAGE, stream, handle, store=payment_records, send=send, send_dead_letter=dead_letter_sender(STAGE))


@app.timer(interval=5.0)
async def resume_interrupted_charges() -> None:
    """Restart charges this worker owns that are still ``charging`` but have no call in flight."""
    stale_after = settings.gateway_timeout * settings.gateway_max_attempts + 5.0
    now = time.time()
    for order_id, record in list(local_items(order_to_payment)):
        if record.get("status") != "charging" or order_id in _inflight:
            continue
        if now - float(record.get("updated", 0)) < stale_after or "command" not in record:
            continue
        log.info("resuming interrupted charge for order %s", order_id)
        _start(record["command"])
