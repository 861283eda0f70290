"""Every message type in one table: its kind, the topics it travels on, its version, its payload record.

The envelope's type lists, the registry's versions and per-topic types, the payload
checks and the stages' topic names all read this table; adding a type is one row.
Events are named in the past tense (``order.placed``), commands in the imperative
(``inventory.reserve``). Topics are logical names (``{app_id}.{topic}`` in Kafka).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from schemas.payloads import (
    ID,
    INT,
    ITEM,
    LINE,
    OPT_ID,
    OPT_INT,
    OPT_STR,
    ORDER_EVENT,
    PAYMENT_RESULT,
    USER,
    Field,
)

#: The logical topics: each stage's input, each with a dead-letter topic ``{topic}.dlq``.
ORDERS = "orders"
INVENTORY = "inventory"
PAYMENTS = "payments"
NOTIFICATIONS = "notifications"
ANALYTICS = "analytics"
USERS = "users"
TOPICS = (ORDERS, INVENTORY, PAYMENTS, NOTIFICATIONS, ANALYTICS, USERS)
#: Where dead letters and redrive requests travel (every ``{topic}.dlq``).
DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class MessageType:
    """One row of the catalogue."""

    name: str
    kind: Literal["event", "command"]
    #: The logical topics it travels on (anything else arriving there is dead-lettered).
    topics: frozenset[str]
    #: The version this code writes; older ones are upcast on read (``schemas.registry``).
    version: int = 1
    #: The current payload record (``None``: checked by its stage only).
    record: dict[str, Field] | None = field(default=None, compare=False)


def _t(
    name: str,
    kind: Literal["event", "command"],
    topics: tuple[str, ...],
    record: dict[str, Field] | None,
    version: int = 1,
) -> MessageType:
    return MessageType(name, kind, frozenset(topics), version, record)


#: What listing and redriving a dead letter read: a letter without them (written by hand onto a
#: ``.dlq`` topic) is kept as a letter about itself, never stored as one that breaks ``GET /dlq``.
_DEAD_LETTER = {
    "stage": Field("str"),
    "error": Field("str"),
    "source_topic": ID,
    "partition": INT,
    "offset": INT,
    "key": OPT_STR,
    "original_kind": OPT_STR,
    "answered": OPT_INT,
}

_ORDER_CONFIRMED = {
    "order_id": ID,
    "total_cents": OPT_INT,
    "items": Field("list", required=False, fields=ITEM),
    "confirmed_at": Field("timestamp", required=False),
}

CATALOGUE: dict[str, MessageType] = {
    t.name: t
    for t in (
        _t(
            "order.placed",
            "event",
            (ORDERS,),
            {
                "order_id": ID,
                "user_id": ID,
                "user_email": OPT_STR,
                "items": Field("list", fields=ITEM, min_items=1),
                "total_cents": OPT_INT,
                "currency": Field("str", required=False),
                "payment": Field("object", fields={"token": ID, "last4": OPT_STR, "method": OPT_STR}),
            },
            version=2,
        ),
        _t("order.paid", "event", (ORDERS,), ORDER_EVENT),
        _t("order.confirmed", "event", (ORDERS,), _ORDER_CONFIRMED),
        _t("order.rejected", "event", (ORDERS,), ORDER_EVENT),
        _t("order.cancelled", "event", (ORDERS,), ORDER_EVENT),
        _t("order.shipped", "event", (ORDERS,), ORDER_EVENT),
        _t("order.delivered", "event", (ORDERS,), ORDER_EVENT),
        _t("order.cancel", "command", (ORDERS,), {"order_id": ID, "reason": OPT_STR, "note": OPT_STR}),
        _t("order.ship", "command", (ORDERS,), {"order_id": ID, "carrier": OPT_STR, "tracking_number": OPT_STR}),
        _t("order.deliver", "command", (ORDERS,), ORDER_EVENT),
        _t("inventory.reserve", "command", (INVENTORY,), LINE),
        _t("inventory.release", "command", (INVENTORY,), LINE),
        _t("inventory.commit", "command", (INVENTORY,), LINE),
        _t("inventory.restock", "command", (INVENTORY,), {"product_id": OPT_ID, "quantity": INT}),
        _t("inventory.set_stock", "command", (INVENTORY,), {"product_id": OPT_ID, "on_hand": INT}),
        _t("inventory.reserved", "event", (ORDERS,), LINE),
        _t("inventory.rejected", "event", (ORDERS,), {**LINE, "requested": OPT_INT, "available": OPT_INT}),
        _t("inventory.released", "event", (ORDERS,), LINE),
        _t("inventory.committed", "event", (ORDERS,), LINE),
        _t("inventory.restocked", "event", (INVENTORY,), {"product_id": ID, "delta": INT, "on_hand": INT}),
        _t(
            "payment.charge",
            "command",
            (PAYMENTS,),
            {
                "order_id": ID,
                "payment_id": ID,
                "token": ID,
                "last4": OPT_STR,
                "amount_cents": INT,
                "currency": Field("str"),
            },
        ),
        _t("payment.refund", "command", (PAYMENTS,), PAYMENT_RESULT),
        _t("payment.processed", "event", (ORDERS, PAYMENTS), PAYMENT_RESULT),
        _t("payment.failed", "event", (ORDERS, PAYMENTS), PAYMENT_RESULT),
        _t(
            "notification.send",
            "command",
            (NOTIFICATIONS,),
            {"order_id": ID, "user_id": ID, "email": OPT_STR, "total": OPT_STR, "currency": OPT_STR},
        ),
        _t("notification.sent", "event", (ORDERS,), {"order_id": ID, "to": OPT_STR}),
        _t(
            "analytics.record",
            "command",
            (ANALYTICS,),
            {
                "order_id": ID,
                "total_cents": INT,
                "currency": OPT_STR,
                "items": Field("list", fields=ITEM),
                "confirmed_at": Field("timestamp"),
            },
        ),
        _t("analytics.order_recorded", "event", (ORDERS,), {"order_id": ID, "total_cents": INT, "currency": OPT_STR}),
        _t("user.created", "event", (USERS,), USER),
        _t("user.updated", "event", (USERS,), USER),
        _t("event.processing.failed", "event", (DEAD_LETTER,), _DEAD_LETTER),
        _t("dead_letter.redrive", "command", (DEAD_LETTER,), None),
    )
}

EVENT_TYPES = frozenset(name for name, t in CATALOGUE.items() if t.kind == "event")
COMMAND_TYPES = frozenset(name for name, t in CATALOGUE.items() if t.kind == "command")
#: Current version per type; types not listed are at version 1.
CURRENT_VERSION = {name: t.version for name, t in CATALOGUE.items() if t.version != 1}
#: The types that may travel on each logical input topic.
TOPIC_TYPES = {topic: frozenset(name for name, t in CATALOGUE.items() if topic in t.topics) for topic in TOPICS}
#: What travels on every dead-letter topic (``{topic}.dlq``): letters and redrive requests.
DEAD_LETTER_TYPES = frozenset(name for name, t in CATALOGUE.items() if DEAD_LETTER in t.topics)
#: The current payload record of each type that has one.
RECORDS = {name: t.record for name, t in CATALOGUE.items() if t.record is not None}
