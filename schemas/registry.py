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

from schemas.catalogue import COMMAND_TYPES, CURRENT_VERSION, DEAD_LETTER_TYPES, EVENT_TYPES, TOPIC_TYPES
from schemas.envelope import Envelope, derived_id, make, validate
from schemas.payloads import PayloadError, check_payload

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

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


def order_placed(
    order_id: str, payload: dict[str, Any], *, metadata: dict[str, Any] | None = None, timestamp: str | None = None
) -> Envelope:
    """The ``order.placed`` the HTTP edge makes: current version, id derived from the order id.

    A retried ``POST /orders`` with the same key therefore places the same event (the saga
    drops the second), and the load generators and tests build exactly what the edge does.
    """
    return make(
        "order.placed",
        "order",
        order_id,
        payload,
        correlation_id=order_id,
        event_id=derived_id(f"placed/{order_id}", 0),
        timestamp=timestamp,
        version=current_version("order.placed"),
        metadata=metadata,
    )


def set_stock_command(product_id: str, on_hand: int) -> Envelope:
    """The ``inventory.set_stock`` command ``PUT /inventory/{id}`` makes (and the handler-path bench)."""
    return make(
        "inventory.set_stock",
        "product",
        product_id,
        {"product_id": product_id, "on_hand": on_hand},
        correlation_id=product_id,
    )


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
        try:
            payload = UPCASTERS[(type_, version)](payload)
        except Exception as exc:  # a payload its upcaster cannot read is malformed
            raise PayloadError(f"{type_} v{version} payload cannot be upcast: {type(exc).__name__}: {exc}") from exc
        version += 1
    if version != envelope["version"]:
        envelope = Envelope(**{**envelope, "payload": payload, "version": version})  # type: ignore[typeddict-item]
    return envelope


def read(value: Any, topic: str | None = None) -> Envelope:
    """Turn a decoded message value into a checked, current-version envelope, or raise why not.

    Checks the envelope's shape, upcasts, checks the type travels on ``topic`` (a
    logical topic name) and checks the payload against its record. Raises
    :class:`~schemas.envelope.EnvelopeError`, :class:`UnknownMessageError` or
    :class:`~schemas.payloads.PayloadError` (all ``ValueError``). Missing optional envelope
    fields are filled in ``value`` itself (no copy on the hot path): a dead letter keeps
    the original from the message's bytes.
    """
    env = upcast(validate(value))  # fills missing optional fields in place: callers keep the bytes as they came
    if topic is not None:
        allowed = DEAD_LETTER_TYPES if topic.endswith(".dlq") else TOPIC_TYPES.get(topic)
        if allowed is not None and env["type"] not in allowed:
            raise UnknownMessageError(f"{env['type']!r} does not travel on the {topic} topic")
    check_payload(env["type"], env["payload"])
    return env
