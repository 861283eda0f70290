"""The one door to state: every table of the app, each changelogged RocksDB.

Tables are named as mappings. Keys are strings (stored raw), values JSON: the app's default key and value
serializers (``raw`` and the orjson codec) apply to every table.
A key's changelog partition is the partition of the event that wrote it, which for
every table here is the partition its own key hashes to in the source topic — so a
key's state lives with the partition that owns it and moves with it on rebalance.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faust.types import TableT

from app.main import app, settings


def _table(name: str, help_: str) -> TableT[Any, Any]:
    return app.Table(
        name,
        default=None,
        partitions=settings.partitions,
        help=help_,
    )


#: order id -> order read model and saga state (status, items, payment, line progress).
order_to_state = _table("order_to_state", "Orders read model and saga state.")
#: order id -> epoch seconds by which a reserved order must be paid.
order_to_deadline = _table("order_to_deadline", "Payment deadlines of reserved orders.")
#: order id -> the order's events in causal order.
order_to_history = _table("order_to_history", "Per-order event history.")
#: product id -> {on_hand, reserved, sold}.
product_to_stock = _table("product_to_stock", "Per-product stock.")
#: "product/order" -> {state, quantity}: one order's reservation of one product.
reservation_to_state = _table("reservation_to_state", "Per-order, per-product reservations.")
#: order id -> payment record.
order_to_payment = _table("order_to_payment", "Payments.")
#: user id -> profile.
user_to_profile = _table("user_to_profile", "Customer directory.")
#: order id -> the notification sent for it.
order_to_notification = _table("order_to_notification", "Notifications sent.")
#: partition -> analytics partial (totals, one-minute windows, products).
partition_to_analytics = _table("partition_to_analytics", "Analytics per partition.")
#: partition -> {status: count}.
partition_to_status_counts = _table("partition_to_status_counts", "Orders by status per partition.")
#: "stage:event id" -> the outputs that event produced (dedupe and re-emit on replay).
event_to_outputs = _table("event_to_outputs", "Processed events and their outputs.")
#: dead-letter id -> dead letter (with redrive status).
dead_letter_to_state = _table("dead_letter_to_state", "Dead letters.")

ALL = (
    order_to_state,
    order_to_deadline,
    order_to_history,
    product_to_stock,
    reservation_to_state,
    order_to_payment,
    user_to_profile,
    order_to_notification,
    partition_to_analytics,
    partition_to_status_counts,
    event_to_outputs,
    dead_letter_to_state,
)


def _key(k: Any) -> str:
    return k.decode() if isinstance(k, bytes) else str(k)


def local_items(table: TableT[Any, Any]) -> Iterator[tuple[str, Any]]:
    """Iterate the (key, value) pairs of the partitions this worker owns."""
    for k, v in table.items():
        if v is not None:
            yield _key(k), v


def reservation_key(product_id: str, order_id: str) -> str:
    """Key of one order's reservation of one product."""
    return f"{product_id}/{order_id}"
