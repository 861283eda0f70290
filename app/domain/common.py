"""What every stage's decision shares: the output type and money helpers."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

#: Logical topic names, from the one catalogue of message types; ``app.topics`` maps them to Kafka topics.
from schemas.catalogue import ANALYTICS as ANALYTICS
from schemas.catalogue import INVENTORY as INVENTORY
from schemas.catalogue import NOTIFICATIONS as NOTIFICATIONS
from schemas.catalogue import ORDERS as ORDERS
from schemas.catalogue import PAYMENTS as PAYMENTS
from schemas.catalogue import USERS as USERS

FINAL_STATUSES = frozenset({"confirmed", "rejected", "cancelled", "shipped", "delivered"})

#: The currency of an order that names none, and the one analytics reports revenue in
#: (orders in other currencies are totalled apart, never added to it).
DEFAULT_CURRENCY = "USD"

#: An order's bounds: the HTTP edge's models and the saga (an ``order.placed`` written on the
#: topic by hand goes through no model) hold every order to them.
MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_PRICE_CENTS = 100_000_000  # 1,000,000.00
MAX_TOTAL_CENTS = 10**11  # 1,000,000,000.00


def check_lines(items: list[dict[str, Any]]) -> None:
    """Refuse (raise ``ValueError``) order lines past the bounds: too many, a quantity not in
    1..:data:`MAX_QUANTITY`, a price not in 0..:data:`MAX_PRICE_CENTS`, or more than
    :data:`MAX_TOTAL_CENTS` in all. For messages written on a topic by hand: the HTTP edge's
    models hold every order it takes to the same bounds.
    """
    if len(items) > MAX_ITEMS or any(
        not 1 <= int(i["quantity"]) <= MAX_QUANTITY or not 0 <= int(i["price_cents"]) <= MAX_PRICE_CENTS for i in items
    ):
        raise ValueError(
            f"past the bounds: at most {MAX_ITEMS} lines of 1 to {MAX_QUANTITY} units "
            f"at most {from_cents(MAX_PRICE_CENTS)} each"
        )
    if sum(int(i["price_cents"]) * int(i["quantity"]) for i in items) > MAX_TOTAL_CENTS:
        raise ValueError(f"totals more than {from_cents(MAX_TOTAL_CENTS)}")


#: ISO 4217 codes that are not money one pays with: precious metals, fund and accounting units,
#: the testing and "no currency" codes.
NOT_PAYABLE = frozenset(
    {"XAG", "XAU", "XPD", "XPT", "XBA", "XBB", "XBC", "XBD", "XDR", "XSU", "XUA", "XTS", "XXX", "XAD"}
    | {"BOV", "CHE", "CHW", "CLF", "COU", "MXV", "USN", "UYI", "UYW"}
)


@functools.cache
def payable_codes() -> frozenset[str]:
    """The ISO 4217 currencies in circulation (pycountry's copy of the standard: it follows its amendments)."""
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies if c.alpha_3 not in NOT_PAYABLE)


def payable(code: object) -> bool:
    """Whether ``code`` is an ISO 4217 currency in circulation (pycountry's copy of the standard)."""
    return isinstance(code, str) and code in payable_codes()


@dataclass(frozen=True)
class Emit:
    """One message a decision wants sent: where, under which key, what."""

    topic: str
    key: str
    type: str
    entity_type: str
    entity_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    #: The id of the event that caused it, when not the input being handled (an order's end,
    #: decided by one input and sent once the releases it waited for landed).
    cause: str | None = None


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


_MONEY = re.compile(r"(0|[1-9][0-9]{0,17})(\.[0-9]{1,2})?")


def parse_money(text: str) -> int:
    """Parse a decimal string of ASCII digits (``"12.50"``, ``"12"``) into cents: no floats, signs or exponents."""
    if not isinstance(text, str) or not _MONEY.fullmatch(text):
        raise MoneyError('must be a decimal string of ASCII digits with at most 2 decimals, such as "12.50"')
    whole, _, frac = text.partition(".")
    return int(whole) * 100 + int(frac.ljust(2, "0") or 0)


def from_cents(cents: int) -> str:
    """Format integer cents as a decimal string, ``1250 -> "12.50"``."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"
