"""Inventory: reserve, release and commit order lines, restock products.

Consumes the inventory topic (key: product id): the commands ``inventory.reserve``,
``inventory.release``, ``inventory.commit`` (one order line each, from the saga) and
``inventory.restock`` / ``inventory.set_stock`` (from the HTTP edge). Emits the
per-line ``inventory.reserved`` / ``rejected`` / ``released`` / ``committed`` to the
orders topic (keyed by order id, so the saga gathers them) and
``inventory.restocked`` to the inventory topic. Tables: ``product_to_stock`` (stock and the
product's reservations in one value).
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
from tables import event_to_outputs, product_to_stock

STAGE = Stage("inventory", INVENTORY)

LINE_COMMANDS = {
    "inventory.reserve": domain.reserve,
    "inventory.release": domain.release,
    "inventory.commit": domain.commit,
}


#: Finished (released or committed) reservations kept per product to answer late copies.
KEEP_FINISHED = 500


async def handle(env: Envelope, event: EventT) -> list[Out] | None:
    """Apply one stock command to the product's stock.

    Stock and the product's reservations live in ONE record per product, written with
    one table write, so a crash never leaves a reservation without its stock change (or
    the reverse); a repeated line command re-sends the answer it got the first time.
    """
    type_ = env["type"]
    product_id = key_of(event) or env["entity_id"]
    if type_ == "inventory.restocked":
        return None  # our own record of a restock already applied
    record = product_to_stock.get(product_id) or {}
    stock = {k: int(record.get(k, 0)) for k in ("on_hand", "reserved", "sold")}
    reservations: dict[str, Any] = dict(record.get("_reservations", {}))
    if type_ in LINE_COMMANDS:
        order_id = str(env["payload"]["order_id"])
        known = reservations.get(order_id)
        if known is not None and type_ in known.get("answers", {}):
            return [tuple(known["answers"][type_])]  # type: ignore[list-item]  # a stored [topic, key, envelope]
        current = {k: v for k, v in known.items() if k != "answers"} if known else None
        decision = LINE_COMMANDS[type_](stock, current, env)
        outs = envelopes(decision.emits, env)
        if decision.reservation is not None:
            answers = dict((known or {}).get("answers", {}))
            if outs:
                answers[type_] = list(outs[0])
            reservations.pop(order_id, None)  # re-insert: the newest change goes last
            reservations[order_id] = {**decision.reservation, "answers": answers}
    elif type_ in ("inventory.restock", "inventory.set_stock"):
        try:
            decision = domain.restock(stock, env)
        except domain.StockError as exc:
            raise PermanentError(str(exc)) from exc
        outs = envelopes(decision.emits, env)
    else:
        raise PermanentError(f"inventory does not handle {type_!r}")
    product_to_stock[product_id] = {**(decision.stock or stock), "_reservations": _pruned(reservations)}
    return outs


def _pruned(reservations: dict[str, Any]) -> dict[str, Any]:
    """Keep every open reservation and the most recent finished ones."""
    finished = [oid for oid, r in reservations.items() if r["state"] in ("released", "committed", "rejected")]
    drop = set(finished[: max(0, len(finished) - KEEP_FINISHED)])
    return {oid: r for oid, r in reservations.items() if oid not in drop}


@app.agent(inventory_topic)
async def reserve_stock(stream: StreamT[Any]) -> None:
    """Run the inventory stage over the inventory topic."""
    await run(STAGE, stream, handle, processed=event_to_outputs, send=send, send_dead_letter=dead_letter_sender(STAGE))
