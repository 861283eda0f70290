"""The current payload record of every message type, checked on read after upcasting.

A reader checks the fields it relies on: present when required, of the right JSON
type (an integer is never a string, a bool or a float; an id is a non-empty string).
Unknown fields are allowed, so adding an optional field never breaks an old reader.
A payload that fails is a :class:`PayloadError`: the message is dead-lettered, never
coerced (``"2"`` is not a quantity) or silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.envelope import parse_ts


class PayloadError(ValueError):
    """A payload does not match its type's record."""


@dataclass(frozen=True)
class Field:
    """One payload field: its JSON kind, whether it must be there, whether it may be null."""

    kind: str  # "id" (non-empty string), "str", "int", "timestamp", "object", "list"
    required: bool = True
    nullable: bool = False
    fields: dict[str, Field] | None = None  # the record of an object, or of each element of a list
    min_items: int = 0


def _ok(kind: str, value: Any) -> bool:
    if kind == "id":
        return isinstance(value, str) and value != ""
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "timestamp":
        if not isinstance(value, str):
            return False
        try:
            parse_ts(value)
        except ValueError:
            return False
        return True
    if kind == "object":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    raise AssertionError(f"unknown field kind {kind!r}")


def check(record: dict[str, Field], obj: dict[str, Any], where: str = "payload") -> None:
    """Raise :class:`PayloadError` unless ``obj`` holds ``record``'s fields with the right kinds."""
    for name, f in record.items():
        if name not in obj:
            if f.required:
                raise PayloadError(f"{where}.{name} is required")
            continue
        value = obj[name]
        if value is None:
            if not f.nullable:
                raise PayloadError(f"{where}.{name} must not be null")
            continue
        if not _ok(f.kind, value):
            raise PayloadError(
                f"{where}.{name} must be {'a non-empty string' if f.kind == 'id' else f.kind}, not {_kind(value)}"
            )
        if f.kind == "list":
            if len(value) < f.min_items:
                raise PayloadError(f"{where}.{name} needs at least {f.min_items} element(s)")
            if f.fields is not None:
                for i, element in enumerate(value):
                    if not isinstance(element, dict):
                        raise PayloadError(f"{where}.{name}[{i}] must be object, not {_kind(element)}")
                    check(f.fields, element, f"{where}.{name}[{i}]")
        elif f.kind == "object" and f.fields is not None:
            check(f.fields, value, f"{where}.{name}")


def _kind(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


ID = Field("id")
INT = Field("int")
OPT_STR = Field("str", required=False, nullable=True)
OPT_INT = Field("int", required=False)
OPT_ID = Field("id", required=False)

ITEM = {"product_id": ID, "quantity": INT, "price_cents": INT}
LINE = {"order_id": ID, "product_id": ID, "quantity": INT}
ORDER_EVENT = {"order_id": ID}
PAYMENT_RESULT = {
    "order_id": ID,
    "payment_id": ID,
    "amount_cents": OPT_INT,
    "currency": OPT_STR,
    "last4": OPT_STR,
    "charge_id": OPT_STR,
    "reason": OPT_STR,
}
USER = {"user_id": OPT_ID, "email": OPT_STR, "name": OPT_STR}

#: The current record of each message type's payload (``event.processing.failed`` and
#: ``dead_letter.redrive`` live on dead-letter topics only and are checked there).
RECORDS: dict[str, dict[str, Field]] = {
    "order.placed": {
        "order_id": ID,
        "user_id": ID,
        "user_email": OPT_STR,
        "items": Field("list", fields=ITEM, min_items=1),
        "total_cents": OPT_INT,
        "currency": Field("str", required=False),
        "payment": Field("object", fields={"token": ID, "last4": OPT_STR, "method": OPT_STR}),
    },
    "order.paid": ORDER_EVENT,
    "order.confirmed": ORDER_EVENT,
    "order.rejected": ORDER_EVENT,
    "order.cancelled": ORDER_EVENT,
    "order.shipped": ORDER_EVENT,
    "order.delivered": ORDER_EVENT,
    "order.cancel": {"order_id": ID, "reason": OPT_STR},
    "order.ship": {"order_id": ID, "carrier": OPT_STR, "tracking_number": OPT_STR},
    "order.deliver": ORDER_EVENT,
    "inventory.reserve": LINE,
    "inventory.release": LINE,
    "inventory.commit": LINE,
    "inventory.reserved": LINE,
    "inventory.released": LINE,
    "inventory.committed": LINE,
    "inventory.rejected": {**LINE, "requested": OPT_INT, "available": OPT_INT},
    "inventory.restock": {"product_id": OPT_ID, "quantity": INT},
    "inventory.set_stock": {"product_id": OPT_ID, "on_hand": INT},
    "inventory.restocked": {"product_id": ID, "delta": INT, "on_hand": INT},
    "payment.charge": {
        "order_id": ID,
        "payment_id": ID,
        "token": ID,
        "last4": OPT_STR,
        "amount_cents": INT,
        "currency": Field("str"),
    },
    "payment.processed": PAYMENT_RESULT,
    "payment.failed": PAYMENT_RESULT,
    "payment.refund": PAYMENT_RESULT,
    "notification.send": {
        "order_id": ID,
        "user_id": ID,
        "email": OPT_STR,
        "total": OPT_STR,
        "currency": OPT_STR,
    },
    "notification.sent": {"order_id": ID, "to": OPT_STR},
    "analytics.record": {
        "order_id": ID,
        "total_cents": INT,
        "currency": OPT_STR,
        "items": Field("list", fields=ITEM),
        "confirmed_at": Field("timestamp"),
    },
    "analytics.order_recorded": {"order_id": ID, "total_cents": INT, "currency": OPT_STR},
    "user.created": USER,
    "user.updated": USER,
}


def check_payload(type_: str, payload: dict[str, Any]) -> None:
    """Raise :class:`PayloadError` unless ``payload`` is a valid current-version ``type_`` payload."""
    record = RECORDS.get(type_)
    if record is not None:
        check(record, payload)
