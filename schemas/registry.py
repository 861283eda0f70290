"""Versioned payload records and the upcaster chain applied on read.

Each message type has a current version. A reader upcasts older payloads one step
at a time (v1 → v2 → …) before any handler sees them, so handlers only know the
current shape. A version newer than the reader knows is an error: the message is
dead-lettered, never guessed at. Adding an optional field needs no new version:
readers ignore fields they do not know.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from schemas.envelope import COMMAND_TYPES, EVENT_TYPES, Envelope

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

#: Current version per message type; types not listed are at version 1.
CURRENT_VERSION: dict[str, int] = {"order.placed": 2}

DEFAULT_CURRENCY = "USD"


class UnknownMessageError(ValueError):
    """The message's type or version is not one this reader knows."""


def _money_to_cents(value: Any) -> int:
    """Turn a v1 float/str price into integer cents, rounding half up as the v1 UI did."""
    cents = (Decimal(str(value)) * 100).quantize(Decimal("1"), rounding=ROUND_HALF_UP)
    return int(cents)


def order_placed_v1_to_v2(payload: Payload) -> Payload:
    """v1 had float ``price``/``total`` and no currency; v2 has integer cents and a currency."""
    out = dict(payload)
    items = []
    for item in payload.get("items", []):
        item2 = {k: v for k, v in item.items() if k != "price"}
        item2["price_cents"] = _money_to_cents(item["price"])
        items.append(item2)
    out["items"] = items
    out.pop("total", None)
    out["total_cents"] = sum(i["price_cents"] * int(i["quantity"]) for i in items)
    out["currency"] = payload.get("currency") or DEFAULT_CURRENCY
    return out


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("order.placed", 1): order_placed_v1_to_v2,
}


def current_version(type_: str) -> int:
    """Return the version this code writes for ``type_``."""
    return CURRENT_VERSION.get(type_, 1)


def upcast(envelope: Envelope) -> Envelope:
    """Bring ``envelope`` to the current version of its type, or raise :class:`UnknownMessageError`."""
    type_ = envelope["type"]
    if type_ not in EVENT_TYPES and type_ not in COMMAND_TYPES:
        raise UnknownMessageError(f"unknown message type {type_!r}")
    target = current_version(type_)
    version = envelope["version"]
    if version > target or version < 1:
        raise UnknownMessageError(f"unknown version {version} of {type_!r} (this reader knows 1..{target})")
    payload = envelope["payload"]
    while version < target:
        payload = UPCASTERS[(type_, version)](payload)
        version += 1
    if version != envelope["version"]:
        envelope = Envelope(**{**envelope, "payload": payload, "version": version})  # type: ignore[typeddict-item]
    return envelope
