"""The one door to state: every store, the shape of its keys, its derived indexes and its named reads.

Each store is partitioned like the topics (partition ``p`` of every store lives with
partition ``p`` of every input topic, see :mod:`app.engine`), has its changelog topic
``{app_id}-{store}-changelog``, and is written only by the stage handlers of its
partition, inside a step. Records, by store:

* ``order_records``: ``log/<order>/<seq>`` — the order's history, append-only: one
  entry per handled input with the input, every event and command it caused, and what
  changed in the order's state (the first entry holds the whole state, each later one
  only the top-level fields it changed). Folding the entries gives the order's state;
  the derived index keeps the result (``st/<order>``), so a read is one get. Nothing is
  ever rewritten, and nothing is added once the order is final.
* Envelopes kept in records (history entries, a notification's or an analytics record's
  event, a payment's result) are stored packed (:func:`pack_event`): the fields an order
  id and the defaults already say are left out, and put back on read.
* ``stock_records``: ``stock/<product>`` and ``reservation/<product>/<order>``; and
  ``restock/<event id>`` for stock commands, which only their id can deduplicate.
* ``payment_records``: ``payment/<order>``.
* ``notification_records``: ``notification/<order>`` — what the order's confirmation
  caused, one record for the two stages that consume ``order.confirmed`` (both handle it
  in the same step, so a confirmed order costs one changelog record here, not two): the
  notification sent (``at``, ``event``: its ``notification.sent``) and the analytics
  stage's mark that the order is counted (``counted``: its ``analytics.order_recorded``).
  Each stage reads and writes only its own fields (:func:`notified`, :func:`put_notified`,
  :func:`counted`, :func:`put_counted`).
* ``analytics_records``: ``window/<minute>`` (pruned after
  :data:`app.domain.analytics.KEEP_MINUTES`; ``pruned``: the horizon the last pruning reached,
  no window before it is left), ``product/<product>``, ``total``; and
  ``recorded/<order>``, the count mark as versions before the shared record kept it (still
  read, never written).
* ``user_records``: ``user/<user>``; ``dead_letters``: ``letter/<dead-letter id>``.

Derived indexes (orders by status and by user, deadlines, status counts) are kept in
each partition's database beside the records, computed from the records as they are
applied — live or while restoring a changelog — and never sent to a changelog.

Reads outside a step (the HTTP API) see the committed state of the partitions this
worker serves (:func:`committed`), or ``None`` when it does not serve the key's partition.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from app.domain import analytics as analytics_domain
from app.domain import orders as orders_domain
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


def latest(partition: int) -> PartitionDB | Step | None:
    """A partition as reads see it here (:meth:`app.engine.runtime.Engine.latest`), else ``None``."""
    return engine.latest(partition)


def latest_for(key: str) -> PartitionDB | Step | None:
    """``key``'s partition as reads see it here, if this worker serves it."""
    return engine.latest(engine.partition_for(key))


# --- orders -----------------------------------------------------------------------


def _log_prefix(order_id: str) -> str:
    return f"log/{order_id}/"


def pack_event(env: Mapping[str, Any], order_id: str, cause: str | None = None) -> dict[str, Any]:
    """An envelope as a record keeps it: without what ``order_id``, ``cause`` and the defaults say.

    Left out: ``entity_id`` and ``correlation_id`` equal to the order id, ``causation_id``
    equal to ``cause`` (in a history entry, the id of the input that caused the event),
    ``version`` 1, empty ``metadata``; and the payload's ``order_id`` (the payload is then
    kept as ``p``).
    """
    packed = dict(env)
    if packed.get("entity_id") == order_id:
        del packed["entity_id"]
    if packed.get("correlation_id") == order_id:
        del packed["correlation_id"]
    if cause is not None and packed.get("causation_id") == cause:
        del packed["causation_id"]
    if packed.get("version") == 1:
        del packed["version"]
    if packed.get("metadata") == {}:
        del packed["metadata"]
    payload = packed.get("payload")
    if isinstance(payload, dict) and payload.get("order_id") == order_id:
        del packed["payload"]
        packed["p"] = {k: v for k, v in payload.items() if k != "order_id"}
    return packed


def unpack_event(packed: dict[str, Any], order_id: str, cause: str | None = None) -> dict[str, Any]:
    """The envelope :func:`pack_event` packed, field for field (in the envelope's field order)."""
    payload = {"order_id": order_id, **packed["p"]} if "p" in packed else packed.get("payload")
    env = {
        "id": packed.get("id"),
        "type": packed.get("type"),
        "entity_type": packed.get("entity_type"),
        "entity_id": packed.get("entity_id", order_id),
        "timestamp": packed.get("timestamp"),
        "version": packed.get("version", 1),
        "correlation_id": packed.get("correlation_id", order_id),
        "causation_id": packed.get("causation_id", cause),
        "payload": payload,
        "metadata": packed.get("metadata", {}),
    }
    extra = [k for k in packed if k not in env and k != "p"]
    if extra:
        env.update((k, packed[k]) for k in extra)
    return env


def _pack_entry_events(events: list[dict[str, Any]], order_id: str) -> list[dict[str, Any]]:
    """A history entry's events packed: what the input caused names it once, as the entry's first event."""
    cause = events[0].get("id") if events else None
    return [pack_event(e, order_id, cause if i else None) for i, e in enumerate(events)]


def _unpack_entry_events(packed: list[dict[str, Any]], order_id: str) -> list[dict[str, Any]]:
    cause = packed[0].get("id") if packed else None
    return [unpack_event(e, order_id, cause if i else None) for i, e in enumerate(packed)]


def state_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What a history entry keeps of a state change: ``set`` (whole fields), ``merge`` (the changed
    keys of a mapping field that lost none, e.g. one line's status of a 100-line order), ``unset``."""
    changes: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key, _ABSENT)
        if before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict) and before.keys() <= value.keys():
            changes.setdefault("merge", {})[key] = {k: v for k, v in value.items() if before.get(k, _ABSENT) != v}
        else:
            changes.setdefault("set", {})[key] = value
    unset = [k for k in old if k not in new]
    if unset:
        changes["unset"] = unset
    return changes


_ABSENT: Any = object()


def fold_entry(state: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The order's state after one history entry: its whole state, or ``state`` with its changes."""
    if "state" in entry:
        return entry["state"]  # type: ignore[no-any-return]
    if state is None:
        return None  # a change without its first entry (cannot happen in a whole changelog)
    new = {**state, **entry.get("set", {})}
    for key, changed in entry.get("merge", {}).items():
        new[key] = {**state.get(key, {}), **changed}
    for key in entry.get("unset", ()):
        new.pop(key, None)
    return new


def latest_order(step: Step, order_id: str) -> tuple[int, dict[str, Any]] | None:
    """``(seq, state)`` of the order's last entry as the step sees it, or ``None`` if unknown."""
    cached = step.cached(ORDERS, order_id)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    latest = step.db.index_get(ORDERS, f"st/{order_id}")
    if latest is None:
        return None
    return latest["seq"], latest["state"]


def last_input_id(step: Step, order_id: str, seq: int) -> str | None:
    """The id of the input the order's entry ``seq`` (its latest: :func:`latest_order`) took."""
    entry = step.get(ORDERS, f"{_log_prefix(order_id)}{seq:06d}")
    events = entry.get("events") if isinstance(entry, dict) else None
    return events[0].get("id") if events else None


def append_order(
    step: Step,
    order_id: str,
    latest: tuple[int, dict[str, Any]] | None,
    events: list[dict[str, Any]],
    state: dict[str, Any],
) -> None:
    """Add the order's next history entry after ``latest`` (:func:`latest_order`): its events and what they changed."""
    packed = _pack_entry_events(events, order_id)
    if latest is None:
        seq, entry = 0, {"events": packed, "state": state}
    else:
        seq, entry = latest[0] + 1, {"events": packed, **state_changes(latest[1], state)}
    step.put(ORDERS, f"{_log_prefix(order_id)}{seq:06d}", entry)
    step.cache_put(ORDERS, order_id, (seq, state))


def order_state(db: PartitionDB, order_id: str) -> dict[str, Any] | None:
    """The order's committed state, or ``None``."""
    latest = db.index_get(ORDERS, f"st/{order_id}")
    return None if latest is None else latest["state"]  # type: ignore[no-any-return]


def order_history(db: PartitionDB, order_id: str) -> list[dict[str, Any]]:
    """Every event of the order in causal order: its entries, then the other stages' events about it."""
    events: list[dict[str, Any]] = []
    for _, entry in db.scan(ORDERS, _log_prefix(order_id)):
        events.extend(_unpack_entry_events(entry["events"], order_id))
    for env in (unpack_event(packed, order_id) for packed in _after_confirmation(db, order_id)):
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
    """The derived entries an order entry changes: its state, lists by status and user, deadlines, counts."""
    if store != ORDERS or not key.startswith("log/") or value is None:
        return []
    prefix, seq = key.rsplit("/", 1)
    order_id = prefix[len("log/") :]
    latest = reader.index_get(f"st/{order_id}")
    if latest is not None and int(seq) <= latest["seq"]:
        return []  # already folded in (the same commit applied again)
    before = latest["state"] if latest else None
    state = fold_entry(before, value)
    if state is None:
        return []
    out: list[tuple[str, Any]] = [(f"st/{order_id}", {"seq": int(seq), "state": state})]
    new = _listed(order_id, state)
    old = {} if before is None else _listed(order_id, before)
    if old == new:
        return out
    out += [(key, None) for key in old if key not in new]
    out += [(key, value) for key, value in new.items() if old.get(key) != value]
    if before is None or before["status"] != state["status"]:
        if before is not None:
            out.append((f"count/{before['status']}", (reader.index_get(f"count/{before['status']}") or 1) - 1))
        out.append((f"count/{state['status']}", (reader.index_get(f"count/{state['status']}") or 0) + 1))
    return out


def _listed(order_id: str, state: dict[str, Any]) -> dict[str, Any]:
    """The list entries an order state puts the order in (only those that change are rewritten)."""
    status, user = state["status"], state["user_id"]
    entries: dict[str, Any] = {
        f"all/{order_id}": 1,
        f"status/{status}/{order_id}": 1,
        f"user/{user}/{order_id}": 1,
        f"user_status/{user}/{status}/{order_id}": 1,
    }
    deadline = state.get("deadline")
    if deadline is not None:
        entries[f"deadline/{_deadline_key(deadline)}/{order_id}"] = orders_domain.deadline_status(state)
    return entries


engine.indexer = index_order


# --- stock, payments, notifications, analytics, users, dead letters -------------------


def payment_record(step: Step, order_id: str) -> dict[str, Any] | None:
    """The order's payment record (its result event unpacked), as the step sees it."""
    record = step.get(PAYMENTS, f"payment/{order_id}")
    if record is None or "result" not in record:
        return record  # type: ignore[no-any-return]
    return {**record, "result": unpack_event(record["result"], order_id)}


def put_payment_record(step: Step, order_id: str, record: dict[str, Any]) -> None:
    """Write the order's payment record, its result event packed."""
    if "result" in record:
        record = {**record, "result": pack_event(record["result"], order_id)}
    step.put(PAYMENTS, f"payment/{order_id}", record)


def reservation_key(product_id: str, order_id: str) -> str:
    """Key of one order's reservation of one product."""
    return f"reservation/{product_id}/{order_id}"


def stock_key(product_id: str) -> str:
    """Key of a product's stock."""
    return f"stock/{product_id}"


def stock_in(view: PartitionDB | Step, product_id: str) -> dict[str, Any] | None:
    """A product's stock in ``view`` (:func:`latest_for` its key), ``None`` when unknown."""
    return view.get(STOCK, stock_key(product_id))  # type: ignore[no-any-return]


def stock_rows(db: PartitionDB | Step, cursor: str, limit: int) -> Iterator[tuple[str, dict[str, Any]]]:
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


def _notification_key(order_id: str) -> str:
    return f"notification/{order_id}"


def _after_confirmation(db: PartitionDB, order_id: str) -> list[dict[str, Any]]:
    """The packed events the notification and analytics stages recorded for the order."""
    record = db.get(NOTIFICATIONS, _notification_key(order_id)) or {}
    legacy = db.get(ANALYTICS, f"recorded/{order_id}") if "counted" not in record else None
    found = [record.get("event"), record.get("counted"), legacy and legacy.get("event")]
    return [event for event in found if event]


def notified(step: Step, order_id: str) -> bool:
    """Whether the order's confirmation was sent."""
    record = step.get(NOTIFICATIONS, _notification_key(order_id))
    return record is not None and "event" in record


def _add_to_confirmation(step: Step, order_id: str, fields: dict[str, Any]) -> None:
    """Write one stage's fields into the order's shared confirmation record, keeping the other's."""
    key = _notification_key(order_id)
    step.put(NOTIFICATIONS, key, {**(step.get(NOTIFICATIONS, key) or {}), **fields})


def put_notified(step: Step, order_id: str, at: str, event: Mapping[str, Any]) -> None:
    """Record the confirmation sent: when, and its ``notification.sent`` (packed)."""
    _add_to_confirmation(step, order_id, {"at": at, "event": pack_event(event, order_id)})


def counted(step: Step, order_id: str) -> bool:
    """Whether the analytics stage already added the order to its aggregates."""
    record = step.get(NOTIFICATIONS, _notification_key(order_id))
    if record is not None and "counted" in record:
        return True
    return step.get(ANALYTICS, f"recorded/{order_id}") is not None


def put_counted(step: Step, order_id: str, event: Mapping[str, Any]) -> None:
    """Mark the order counted, with its ``analytics.order_recorded`` (packed)."""
    _add_to_confirmation(step, order_id, {"counted": pack_event(event, order_id)})


def analytics_partial(db: PartitionDB) -> dict[str, Any]:
    """This partition's aggregates: totals, windows, products."""
    total = db.get(ANALYTICS, "total") or analytics_domain.empty_total()
    # No window is left before the horizon the last pruning reached: seek past the deleted ones.
    horizon = db.get(ANALYTICS, "pruned") or ""
    windows = {k[len("window/") :]: v for k, v in db.scan(ANALYTICS, "window/", horizon)}
    products = {k[len("product/") :]: v for k, v in db.scan(ANALYTICS, "product/")}
    return {**total, "windows": windows, "products": products}
