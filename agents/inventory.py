"""Inventory: reserve, release and commit order lines, restock products.

Consumes the inventory topic (key: product id): the commands ``inventory.reserve``,
``inventory.release``, ``inventory.commit`` (one order line each, from the saga) and
``inventory.restock`` / ``inventory.set_stock`` (from the HTTP edge). Emits the per-line
``inventory.reserved`` / ``rejected`` / ``released`` / ``committed`` to the orders topic
(keyed by order id, so the saga gathers them) and ``inventory.restocked`` to the
inventory topic. Table: ``stock_records`` (``stock/<product>``,
``reservation/<product>/<order>``, ``restock/<command id>``).
"""

from __future__ import annotations

import logging
from typing import Any

from agents._wiring import envelopes, on_partition, send
from app.domain import inventory as domain
from app.domain.common import INVENTORY
from app.engine.step import Step
from app.main import engine
from schemas.envelope import Envelope
from tables import STOCK, reservation_key, stock_key

STAGE = "inventory"
log = logging.getLogger("orderstream.inventory")
LINE_COMMANDS = {
    "inventory.reserve": domain.reserve,
    "inventory.release": domain.release,
    "inventory.commit": domain.commit,
}


def handle_line(step: Step, env: Envelope) -> None:
    """Apply one order line's command to the product's stock."""
    product_id = on_partition(step, str(env["payload"]["product_id"]))
    rkey = reservation_key(product_id, str(env["payload"]["order_id"]))
    stock = step.get(STOCK, stock_key(product_id)) or domain.empty_stock()
    decision = LINE_COMMANDS[env["type"]](stock, step.get(STOCK, rkey), env)
    if decision.reservation is not None:
        step.put(STOCK, rkey, decision.reservation)
    if decision.stock is not None:
        step.put(STOCK, stock_key(product_id), decision.stock)
    send(step, envelopes(decision.emits, env))
    for emit in decision.emits:  # one line per answer: reserved and rejected, released, committed (debug)
        _log_line(emit.type, emit.payload, product_id)


def _log_line(type_: str, payload: dict[str, Any], product_id: str) -> None:
    level = logging.DEBUG if type_ == "inventory.committed" else logging.INFO
    if log.isEnabledFor(level):
        reason = payload.get("reason")
        log.log(
            level,
            "%s %s × %s for order %s%s",
            type_.partition(".")[2],
            payload.get("quantity"),
            product_id,
            payload.get("order_id"),
            f" ({reason})" if reason else "",
        )


def handle_restock(step: Step, env: Envelope) -> None:
    """Add units or set the units on hand, once per command id."""
    marker = f"restock/{env['id']}"
    if step.get(STOCK, marker) is not None:
        return  # this command was applied already (a redelivery, a redriven copy)
    product_id = on_partition(step, env["entity_id"])
    stock = step.get(STOCK, stock_key(product_id)) or domain.empty_stock()
    decision = domain.restock(stock, env)  # a StockError dead-letters the command
    step.put(STOCK, marker, 1)
    if decision.stock is not None:
        step.put(STOCK, stock_key(product_id), decision.stock)
        log.info("stock of %s: %s on hand (%s)", product_id, decision.stock.get("on_hand"), env["type"])
    send(step, envelopes(decision.emits, env))


engine.route(STAGE, INVENTORY, LINE_COMMANDS, handle_line)
engine.route(STAGE, INVENTORY, {"inventory.restock", "inventory.set_stock"}, handle_restock)
