"""Inventory: reserve, release and commit order lines, restock products.

Consumes the inventory topic (key: product id): the commands ``inventory.reserve``,
``inventory.release``, ``inventory.commit`` (one order line each, from the saga) and
``inventory.restock`` / ``inventory.set_stock`` (from the HTTP edge). Emits the
per-line ``inventory.reserved`` / ``rejected`` / ``released`` / ``committed`` to the
orders topic (keyed by order id, so the saga gathers them) and
``inventory.restocked`` to the inventory topic. Tables: ``product_to_stock``,
``reservation_to_state``.
"""

from __future__ import annotations

from typing import Any

from faust.types import EventT, StreamT

from agents._wiring import dead_letter_sender, key_of, send
from app.domain import inventory as domain
from app.domain.common import INVENTORY
from app.main import app
from app.processing import Out, PermanentError, Stage, envelopes, run
from app.topics import inventory_topic
from schemas.envelope import Envelope
from tables import product_to_stock, reservation_key, reservation_to_state, stock_records

STAGE = Stage("inventory", INVENTORY)

LINE_COMMANDS = {
    "inventory.reserve": domain.reserve,
    "inventory.release": domain.release,
    "inventory.commit": domain.commit,
}


async def handle(env: Envelope, event: EventT) -> list[Out] | None:
    """Apply one stock command to the product's stock."""
    type_ = env["type"]
    product_id = key_of(event) or env["entity_id"]
    if type_ == "inventory.restocked":
        return None  # our own record of a restock already applied
    stock = product_to_stock.get(product_id) or domain.empty_stock()
    if type_ in LINE_COMMANDS:
        rkey = reservation_key(product_id, str(env["payload"]["order_id"]))
        decision = LINE_COMMANDS[type_](stock, reservation_to_state.get(rkey), env)
        if decision.reservation is not None:
            reservation_to_state[rkey] = decision.reservation
    elif type_ in ("inventory.restock", "inventory.set_stock"):
        try:
            decision = domain.restock(stock, env)
        except domain.StockError as exc:
            raise PermanentError(str(exc)) from exc
    else:
        raise PermanentError(f"inventory does not handle {type_!r}")
    if decision.stock is not None:
        product_to_stock[product_id] = decision.stock
    return envelopes(decision.emits, env)


@app.agent(inventory_topic)
async def reserve_stock(stream: StreamT[Any]) -> None:
    """Run the inventory stage over the inventory topic."""
    await run(STAGE, stream, handle, store=stock_records, send=send, send_dead_letter=dead_letter_sender(STAGE))
