"""Payments as pure functions plus the retry policy around a gateway call.

One payment record per order: ``charging`` → ``processed`` | ``failed``. The record
holds the result event so a replayed command re-emits exactly what was emitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app.domain.common import ORDERS, Emit, from_cents
from app.gateway import Charged, Declined, PaymentGateway, TransientGatewayError
from schemas.envelope import Envelope

PaymentRecord = dict[str, Any]


@dataclass
class Decision:
    """New record (``None`` = unchanged), whether to start a gateway call, what to send."""

    record: PaymentRecord | None = None
    start_charge: bool = False
    emits: list[Emit] = field(default_factory=list)


def charge_requested(record: PaymentRecord | None, env: Envelope) -> Decision:
    """Start a charge once per order; a repeat re-emits the known result or waits for it."""
    if record is None:
        p = env["payload"]
        new = {
            "order_id": p["order_id"],
            "payment_id": p["payment_id"],
            "status": "charging",
            "amount_cents": int(p["amount_cents"]),
            "currency": p["currency"],
            "last4": p.get("last4"),
            "command": env,
        }
        return Decision(new, start_charge=True)
    if record.get("status") in ("processed", "failed"):
        return Decision(None, emits=[forward(record["result"])])
    return Decision()


def refund_of(record: PaymentRecord | None, env: Envelope) -> str | None:
    """The charge ``payment.refund`` gives back, or ``None`` (refunded already, or no charge named).

    The charge recorded for the order when there is one: a refund naming another charge is
    refused (raises), as giving it back would return someone else's money. Without a recorded
    result yet (at least once, a refund can overtake the record of the charge it answers) the
    saga's word is taken.
    """
    charge_id = env["payload"].get("charge_id")
    if (record or {}).get("refunded") or not charge_id:
        return None
    recorded = record.get("result") if record is not None and record.get("status") == "processed" else None
    if recorded is not None and recorded["payload"].get("charge_id") != charge_id:
        raise ValueError(f"payment.refund names charge {charge_id!r}, not the one this order's payment made")
    return str(charge_id)


def forward(result: Envelope) -> Emit:
    """Forward a payment result to the order's stream."""
    p = result["payload"]
    return Emit(ORDERS, p["order_id"], result["type"], "payment", p["payment_id"], p)


def result_arrived(record: PaymentRecord | None, env: Envelope) -> Decision:
    """Record the first result of a charge and forward it; later copies are ignored."""
    if record is not None and record.get("status") in ("processed", "failed"):
        return Decision()
    status = "processed" if env["type"] == "payment.processed" else "failed"
    base = record or {"order_id": env["payload"]["order_id"], "payment_id": env["payload"]["payment_id"]}
    new = {**base, "status": status, "result": env}
    new.pop("command", None)
    return Decision(new, emits=[forward(env)])


def result_payload(command: dict[str, Any], outcome: Charged | Declined, attempts: int) -> tuple[str, dict[str, Any]]:
    """Turn a gateway outcome into a result event type and payload."""
    base = {
        "order_id": command["order_id"],
        "payment_id": command["payment_id"],
        "amount": from_cents(int(command["amount_cents"])),
        "amount_cents": int(command["amount_cents"]),
        "currency": command["currency"],
        "last4": command.get("last4"),
        "attempts": attempts,
    }
    if isinstance(outcome, Charged):
        return "payment.processed", {**base, "charge_id": outcome.charge_id}
    return "payment.failed", {**base, "reason": outcome.reason}


async def charge_with_retries(
    gateway: PaymentGateway,
    command: dict[str, Any],
    *,
    timeout: float,
    max_attempts: int,
    backoff: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[Charged | Declined, int]:
    """Charge with retries and exponential backoff on transient errors; time out hung calls."""
    attempt = 0
    while True:
        attempt += 1
        try:
            async with asyncio.timeout(timeout):
                outcome = await gateway.charge(
                    command["token"],
                    int(command["amount_cents"]),
                    command["currency"],
                    idempotency_key=command["payment_id"],
                )
            return outcome, attempt
        except TimeoutError:
            return Declined("gateway_timeout"), attempt
        except TransientGatewayError as exc:
            if attempt >= max_attempts:
                return Declined(exc.code), attempt
            await sleep(backoff * 2 ** (attempt - 1))
