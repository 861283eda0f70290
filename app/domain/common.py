"""What every stage's decision shares: the output type and money helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

#: Logical topic names; ``app.topics`` maps them to Kafka topics.
ORDERS = "orders"
INVENTORY = "inventory"
PAYMENTS = "payments"
NOTIFICATIONS = "notifications"
ANALYTICS = "analytics"
USERS = "users"

FINAL_STATUSES = frozenset({"confirmed", "rejected", "cancelled", "shipped", "delivered"})


@dataclass(frozen=True)
class Emit:
    """One message a decision wants sent: where, under which key, what."""

    topic: str
    key: str
    type: str
    entity_type: str
    entity_id: str
    payload: dict[str, Any] = field(default_factory=dict)


class MoneyError(ValueError):
    """A money amount is not a valid non-negative decimal with at most two places."""


def to_cents(value: Any) -> int:
    """Parse ``"12.50"``, ``12.5`` or ``12`` into integer cents; reject more than 2 decimals."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MoneyError('must be a decimal string such as "12.50"')
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise MoneyError('must be a decimal string such as "12.50"') from None
    if not amount.is_finite() or amount < 0:
        raise MoneyError("must be a non-negative amount")
    cents = amount * 100
    if cents != cents.to_integral_value():
        raise MoneyError("has more than two decimal places")
    return int(cents.quantize(Decimal("1"), rounding=ROUND_HALF_UP))


def from_cents(cents: int) -> str:
    """Format integer cents as a decimal string, ``1250 -> "12.50"``."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"
