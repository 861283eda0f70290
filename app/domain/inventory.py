"""Per-product stock as pure functions, run on the product's own partition.

Stock is ``{on_hand, reserved, sold}``: ``on_hand`` counts units held and not yet
sold, ``available = on_hand - reserved``. Conservation: initial + restocked ==
available + reserved + sold. Each order's reservation of a product is one record
(``reserved`` → ``released`` | ``committed``) so release and commit are exact and
idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.domain.common import INVENTORY, ORDERS, Emit
from schemas.envelope import Envelope

Stock = dict[str, int]
Reservation = dict[str, Any]


def empty_stock() -> Stock:
    """Return the stock of a product nobody has touched."""
    return {"on_hand": 0, "reserved": 0, "sold": 0}


def available(stock: Stock) -> int:
    """Units that can still be reserved."""
    return stock["on_hand"] - stock["reserved"]


def to_view(product_id: str, stock: Stock | None) -> dict[str, Any]:
    """Render stock as the API returns it; unknown products are all zeros."""
    s = stock or empty_stock()
    return {"product_id": product_id, **{k: s[k] for k in ("on_hand", "reserved", "sold")}, "available": available(s)}


@dataclass
class Decision:
    """New stock and reservation (``None`` = unchanged) and what to send."""

    stock: Stock | None = None
    reservation: Reservation | None = None
    emits: list[Emit] = field(default_factory=list)


def _to_order(type_: str, payload: dict[str, Any]) -> Emit:
    order_id = payload["order_id"]
    return Emit(ORDERS, order_id, type_, "product", payload["product_id"], payload)


def reserve(stock: Stock, reservation: Reservation | None, env: Envelope) -> Decision:
    """Reserve the line if enough is available, else reject it with what was available."""
    p = env["payload"]
    qty = int(p["quantity"])
    line = {"order_id": str(p["order_id"]), "product_id": str(p["product_id"]), "quantity": qty}
    if qty <= 0:
        raise ValueError("quantity must be positive")
    if reservation is not None:
        return Decision()  # this order already has its answer for this product
    if available(stock) < qty:
        rejected = {**line, "requested": qty, "available": max(available(stock), 0)}
        return Decision(None, {"state": "rejected", "quantity": qty}, [_to_order("inventory.rejected", rejected)])
    new = {**stock, "reserved": stock["reserved"] + qty}
    return Decision(new, {"state": "reserved", "quantity": qty}, [_to_order("inventory.reserved", line)])


def release(stock: Stock, reservation: Reservation | None, env: Envelope) -> Decision:
    """Give a reserved line back; anything else is a no-op."""
    if reservation is None or reservation["state"] != "reserved":
        return Decision()
    qty = int(reservation["quantity"])
    p = env["payload"]
    new = {**stock, "reserved": stock["reserved"] - qty}
    line = {"order_id": str(p["order_id"]), "product_id": str(p["product_id"]), "quantity": qty}
    return Decision(new, {**reservation, "state": "released"}, [_to_order("inventory.released", line)])


def commit(stock: Stock, reservation: Reservation | None, env: Envelope) -> Decision:
    """Turn a reserved line into sold units."""
    if reservation is None or reservation["state"] != "reserved":
        return Decision()
    qty = int(reservation["quantity"])
    p = env["payload"]
    new = {"on_hand": stock["on_hand"] - qty, "reserved": stock["reserved"] - qty, "sold": stock["sold"] + qty}
    line = {"order_id": str(p["order_id"]), "product_id": str(p["product_id"]), "quantity": qty}
    return Decision(new, {**reservation, "state": "committed"}, [_to_order("inventory.committed", line)])


class StockError(ValueError):
    """A stock change that would break the stock's invariants."""


def restock(stock: Stock, env: Envelope) -> Decision:
    """Add units (``inventory.restock``) or set the units on hand (``inventory.set_stock``)."""
    p = env["payload"]
    product_id = env["entity_id"]
    if env["type"] == "inventory.restock":
        delta = int(p["quantity"])
        if delta <= 0:
            raise StockError("restock quantity must be positive")
    else:
        target = int(p["on_hand"])
        if target < stock["reserved"]:
            raise StockError(f"cannot set on_hand to {target}: {stock['reserved']} units are reserved")
        delta = target - stock["on_hand"]
    new = {**stock, "on_hand": stock["on_hand"] + delta}
    event = {"product_id": product_id, "delta": delta, "on_hand": new["on_hand"]}
    return Decision(new, None, [Emit(INVENTORY, product_id, "inventory.restocked", "product", product_id, event)])
