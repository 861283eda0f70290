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
        from schemas.envelope import parse_ts  # here: the envelope module reads the catalogue, which reads this

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


_records: dict[str, dict[str, Field]] | None = None


def check_payload(type_: str, payload: dict[str, Any]) -> None:
    """Raise :class:`PayloadError` unless ``payload`` is a valid current-version ``type_`` payload."""
    global _records
    if _records is None:
        from schemas.catalogue import RECORDS  # here: the catalogue is built from this module's fields

        _records = RECORDS
    record = _records.get(type_)
    if record is not None and not _conforms(record, payload):
        check(record, payload)  # says what is wrong (or passes what the one-pass test left to it)


_ABSENT: Any = object()


def _conforms(record: dict[str, Field], obj: dict[str, Any]) -> bool:
    """One pass with exact JSON types (what every decoded message has): ``True`` only if :func:`check` passes.

    ``False`` leaves the verdict and its message to :func:`check`.
    """
    for name, f in record.items():
        value = obj.get(name, _ABSENT)
        if value is _ABSENT:
            if f.required:
                return False
            continue
        if value is None:
            if not f.nullable:
                return False
            continue
        kind, t = f.kind, type(value)
        if kind == "id":
            if t is not str or not value:
                return False
        elif kind == "int":
            if t is not int:
                return False
        elif kind == "str":
            if t is not str:
                return False
        elif kind == "list":
            if t is not list or len(value) < f.min_items:
                return False
            if f.fields is not None:
                for element in value:
                    if type(element) is not dict or not _conforms(f.fields, element):
                        return False
        elif kind == "object":
            if t is not dict or (f.fields is not None and not _conforms(f.fields, value)):
                return False
        elif not _ok(kind, value):
            return False
    return True
