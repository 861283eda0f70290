"""Running the stages' real adapters over a real partition database, one input at a time, without Kafka."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from app.engine.step import Step
from app.engine.store import PartitionDB
from schemas.envelope import make


def run(step: Step, handler: Any, env: dict[str, Any]) -> list[dict[str, Any]]:
    """Handle ``env`` with ``handler`` in ``step`` and return the envelopes it sent (then forget them)."""
    step.begin("test", "t", 0, env)
    handler(step, env)
    out = [orjson.loads(o.value) for o in step.outputs]
    step.outputs.clear()
    return out


def stocked(path: Path, on_hand: int = 5) -> Step:
    """The inventory stage's partition 0 in a database at ``path``, holding ``on_hand`` units of product ``a``."""
    from agents import inventory

    stock = Step(0, PartitionDB(path, 0))
    set_stock = make("inventory.set_stock", "product", "a", {"product_id": "a", "on_hand": on_hand}, correlation_id="a")
    run(stock, inventory.handle_restock, dict(set_stock))
    return stock


def one_line_order(order_id: str, quantity: int) -> dict[str, Any]:
    """An ``order.placed`` of ``quantity`` units of product ``a`` at 1.00, paid by card."""
    payload = {
        "order_id": order_id,
        "user_id": "u1",
        "items": [{"product_id": "a", "quantity": quantity, "price_cents": 100}],
        "total_cents": 100 * quantity,
        "currency": "USD",
        "payment": {"method": "card", "token": "tok_visa", "last4": "4242"},
    }
    return dict(make("order.placed", "order", order_id, payload, correlation_id=order_id, version=2))
