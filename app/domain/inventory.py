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

#: The most units a product may have on hand (``PUT /inventory`` sets at most this; a restock
#: past it is refused).
MAX_ON_HAND = 1_000_000_000

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
        # This order already has its answer for this product: give the same answer again
        # (a replayed command must re-emit what it caused; the saga drops the copy).
        if reservation["state"] == "rejected":
            again = {**line, "requested": qty, "available": reservation.get("available", 0)}
            return Decision(None, None, [_to_order("inventory.rejected", again)])
        return Decision(None, None, [_to_order("inventory.reserved", {**line, "quantity": reservation["quantity"]})])
    if available(stock) < qty:
        rejected = {**line, "requested": qty, "available": max(available(stock), 0)}
        record = {"state": "rejected", "quantity": qty, "available": rejected["available"]}
        return Decision(None, record, [_to_order("inventory.rejected", rejected)])
    new = {**stock, "reserved": stock["reserved"] + qty}
    return Decision(new, {"state": "reserved", "quantity": qty}, [_to_order("inventory.reserved", line)])


def _settled_again(reservation: Reservation | None, env: Envelope, state: str, type_: str) -> Decision | None:
    """A release or commit already applied: re-emit its answer (same cause, same id); else ``None``."""
    if reservation is None or reservation["state"] != state:
        return None
    p = env["payload"]
    line = {
        "order_id": str(p["order_id"]),
        "product_id": str(p["product_id"]),
        "quantity": int(reservation["quantity"]),
    }
    return Decision(None, None, [_to_order(type_, line)])


def release(stock: Stock, reservation: Reservation | None, env: Envelope) -> Decision:
    """Give a reserved line back; a repeat re-emits the answer; anything else is a no-op."""
    again = _settled_again(reservation, env, "released", "inventory.released")
    if again is not None:
        return again
    if reservation is None or reservation["state"] != "reserved":
        return Decision()
    qty = int(reservation["quantity"])
    p = env["payload"]
    new = {**stock, "reserved": stock["reserved"] - qty}
    line = {"order_id": str(p["order_id"]), "product_id": str(p["product_id"]), "quantity": qty}
    return Decision(new, {**reservation, "state": "released"}, [_to_order("inventory.released", line)])


def commit(stock: Stock, reservation: Reservation | None, env: Envelope) -> Decision:
    """Turn a reserved line into sold units; a repeat re-emits the answer."""
    again = _settled_again(reservation, env, "committed", "inventory.committed")
    if again is not None:
        return again
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
    if stock["on_hand"] + delta > MAX_ON_HAND:
        raise StockError(f"on_hand would be {stock['on_hand'] + delta}, past the {MAX_ON_HAND} a product may hold")
    new = {**stock, "on_hand": stock["on_hand"] + delta}
    event = {"product_id": product_id, "delta": delta, "on_hand": new["on_hand"]}
    return Decision(new, None, [Emit(INVENTORY, product_id, "inventory.restocked", "product", product_id, event)])
