"""The one door to state: every store, the shape of its keys, its derived indexes and its named reads.

Each store is partitioned like the topics (partition ``p`` of every store lives with
partition ``p`` of every input topic, see :mod:`app.engine`), has its changelog topic
``{app_id}-{store}-changelog``, and is written only by the stage handlers of its
partition, inside a step. Records, by store:

* ``order_records``: ``log/<order>/<seq>`` — the order's history, append-only: one
  entry per handled input with the input, every event and command it caused, and the
  order's state after it. The last entry's state *is* the order's state (one reverse
  seek); nothing is ever rewritten, and nothing is added once the order is final.
* ``stock_records``: ``stock/<product>`` and ``reservation/<product>/<order>``; and
  ``restock/<event id>`` for stock commands, which only their id can deduplicate.
* ``payment_records``: ``payment/<order>``; ``notification_records``:
  ``notification/<order>`` (the confirmation sent, with its ``notification.sent``).
* ``analytics_records``: ``recorded/<order>`` (counted once, with its
  ``analytics.order_recorded``), ``window/<minute>`` (pruned after
  :data:`app.domain.analytics.KEEP_WINDOWS`), ``product/<product>``, ``total``.
* ``user_records``: ``user/<user>``; ``dead_letters``: ``letter/<dead-letter id>``.

Derived indexes (orders by status and by user, deadlines, status counts) are kept in
each partition's database beside the records, computed from the records as they are
applied — live or while restoring a changelog — and never sent to a changelog.

Reads outside a step (the HTTP API) see the committed state of the partitions this
worker serves (:func:`committed`), or ``None`` when it does not serve the key's partition.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from app.engine.step import Step
from app.engine.store import IndexReader, PartitionDB
from app.main import engine

ORDERS = "order_records"
STOCK = "stock_records"
PAYMENTS = "payment_records"
NOTIFICATIONS = "notification_records"
ANALYTICS = "analytics_records"
USERS = "user_records"
DEAD_LETTERS = "dead_letters"


def _second(key: str) -> str | None:
    """``prefix/<id>/...`` -> ``<id>``: what a long-poll on an order waits for."""
    parts = key.split("/", 2)
    return parts[1] if len(parts) > 1 else None


for _name in (ORDERS, STOCK, PAYMENTS, NOTIFICATIONS, ANALYTICS, USERS, DEAD_LETTERS):
    engine.store(_name, entity=_second if _name == ORDERS else None)


def committed(partition: int) -> PartitionDB | None:
    """The committed database of a partition this worker serves now, else ``None``."""
    return engine.db(partition)


def committed_for(key: str) -> PartitionDB | None:
    """The committed database holding ``key``'s partition, if this worker serves it."""
    return engine.db(engine.partition_for(key))


# --- orders -----------------------------------------------------------------------


def _log_prefix(order_id: str) -> str:
    return f"log/{order_id}/"


def latest_order(step: Step, order_id: str) -> tuple[int, dict[str, Any]] | None:
    """``(seq, state)`` of the order's last entry as the step sees it, or ``None`` if unknown."""
    cached = step.cached(ORDERS, order_id)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    item = step.db.last(ORDERS, _log_prefix(order_id))
    if item is None:
        return None
    return int(item[0].rsplit("/", 1)[1]), item[1]["state"]


def append_order(step: Step, order_id: str, seq: int, events: list[dict[str, Any]], state: dict[str, Any]) -> None:
    """Add the order's next history entry (its events and the state after them)."""
    step.put(ORDERS, f"{_log_prefix(order_id)}{seq:06d}", {"events": events, "state": state})
    step.cache_put(ORDERS, order_id, (seq, state))


def order_state(db: PartitionDB, order_id: str) -> dict[str, Any] | None:
    """The order's committed state, or ``None``."""
    item = db.last(ORDERS, _log_prefix(order_id))
    return None if item is None else item[1]["state"]  # type: ignore[no-any-return]


def order_history(db: PartitionDB, order_id: str) -> list[dict[str, Any]]:
    """Every event of the order in causal order: its entries, then the other stages' events about it."""
    events: list[dict[str, Any]] = []
    for _, entry in db.scan(ORDERS, _log_prefix(order_id)):
        events.extend(entry["events"])
    extra = [
        record["event"]
        for record in (db.get(NOTIFICATIONS, f"notification/{order_id}"), db.get(ANALYTICS, f"recorded/{order_id}"))
        if record and record.get("event")
    ]
    for env in extra:
        # After its cause (``order.confirmed``), else at the end.
        at = next((i + 1 for i, e in enumerate(events) if e["id"] == env.get("causation_id")), len(events))
        events.insert(at, env)
    return events


def order_rows(
    db: PartitionDB, *, status: str | None, user_id: str | None, cursor: str, limit: int
) -> Iterator[dict[str, Any]]:
    """Up to ``limit`` order states after ``cursor`` (by order id), by RocksDB range seeks over an index.

    Cost is proportional to the page: one seek, then one index entry and one state per row.
    """
    if user_id and status:
        prefix = f"user_status/{user_id}/{status}/"
    elif user_id:
        prefix = f"user/{user_id}/"
    elif status:
        prefix = f"status/{status}/"
    else:
        prefix = "all/"
    start = cursor + "\x00" if cursor else ""
    n = 0
    for key, _ in db.index_scan(ORDERS, prefix, start):
        if n >= limit:
            return
        state = order_state(db, key[len(prefix) :])
        if state is not None:
            n += 1
            yield state


def status_counts(db: PartitionDB) -> dict[str, int]:
    """Orders per status in this partition."""
    return {key[len("count/") :]: n for key, n in db.index_scan(ORDERS, "count/") if n}


def due_deadlines(db: PartitionDB, now: float, limit: int = 500) -> list[tuple[str, str]]:
    """``(order id, status)`` of orders whose deadline passed, oldest first."""
    out = []
    for key, status in db.index_scan(ORDERS, "deadline/", stop=_deadline_key(now)):
        out.append((key.rsplit("/", 1)[1], status))
        if len(out) >= limit:
            break
    return out


def _deadline_key(at: float) -> str:
    return f"{at:017.3f}"


def index_order(store: str, key: str, value: Any, reader: IndexReader) -> list[tuple[str, Any]]:
    """The derived entries an order entry changes: lists by status and user, deadlines, counts."""
    if store != ORDERS or not key.startswith("log/") or value is None:
        return []
    state = value["state"]
    order_id = state["order_id"]
    new = {"s": state["status"], "u": state["user_id"], "d": state.get("deadline")}
    old = reader.index_get(f"o/{order_id}")
    if old == new:
        return []
    out: list[tuple[str, Any]] = [(f"o/{order_id}", new), (f"all/{order_id}", 1)]
    if old is not None:
        out += [
            (f"status/{old['s']}/{order_id}", None),
            (f"user/{old['u']}/{order_id}", None),
            (f"user_status/{old['u']}/{old['s']}/{order_id}", None),
        ]
        if old.get("d") is not None:
            out.append((f"deadline/{_deadline_key(old['d'])}/{order_id}", None))
        if old["s"] != new["s"]:
            out.append((f"count/{old['s']}", (reader.index_get(f"count/{old['s']}") or 1) - 1))
    out += [
        (f"status/{new['s']}/{order_id}", 1),
        (f"user/{new['u']}/{order_id}", new["s"]),
        (f"user_status/{new['u']}/{new['s']}/{order_id}", 1),
    ]
    if new["d"] is not None:
        out.append((f"deadline/{_deadline_key(new['d'])}/{order_id}", new["s"]))
    if old is None or old["s"] != new["s"]:
        # Read after the decrement above when both name the same key (they cannot: statuses differ).
        out.append((f"count/{new['s']}", (reader.index_get(f"count/{new['s']}") or 0) + 1))
    return out


engine.indexer = index_order


# --- stock, payments, notifications, analytics, users, dead letters -------------------


def reservation_key(product_id: str, order_id: str) -> str:
    """Key of one order's reservation of one product."""
    return f"reservation/{product_id}/{order_id}"


def stock_rows(db: PartitionDB, cursor: str, limit: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Up to ``limit`` ``(product id, stock)`` after ``cursor``, in product order."""
    start = cursor + "\x00" if cursor else ""
    for n, (key, stock) in enumerate(db.scan(STOCK, "stock/", start)):
        if n >= limit:
            return
        yield key[len("stock/") :], stock


def dead_letter_rows(db: PartitionDB, cursor: str) -> Iterator[dict[str, Any]]:
    """Dead letters after ``cursor``, in id order."""
    start = cursor + "\x00" if cursor else ""
    for _, letter in db.scan(DEAD_LETTERS, "letter/", start):
        yield letter


def analytics_partial(db: PartitionDB) -> dict[str, Any]:
    """This partition's aggregates: totals, windows, products."""
    total = db.get(ANALYTICS, "total") or {"orders": 0, "revenue_cents": 0, "currency": None}
    windows = {k[len("window/") :]: v for k, v in db.scan(ANALYTICS, "window/")}
    products = {k[len("product/") :]: v for k, v in db.scan(ANALYTICS, "product/")}
    return {**total, "windows": windows, "products": products}
