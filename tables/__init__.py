"""The one door to state: every record of the app, in one changelogged RocksDB table per stage.

Why one table per stage, not one per kind of record: a handled event usually writes
several records (an order's state and its history; a product's stock and one
reservation) plus its dedupe record, and a SIGKILL can land while those changelog
writes are half flushed. Kafka keeps the records of one topic partition in the order
they were produced (aiokafka has one batch in flight per partition), so when every
record an event writes goes to the *same* changelog partition, whatever survives a
crash is a prefix of the writes, in order. The stage loop (``app.processing``) writes
the event's dedupe record first, holding every write the event makes, and then the
writes themselves: a surviving dedupe record means the whole effect can be replayed
from it, a missing one means none of the effect survived.

Each stage's store is one Faust table (RocksDB via rocksdict, with its changelog
topic); the mappings the code uses (``order_to_state``, ``product_to_stock``, …) are
views over a key prefix of their stage's store. Keys are strings, values JSON (the
orjson codec). A record's changelog partition is the partition of the event that wrote
it, which for every record here is the partition its own key hashes to in the source
topic, so state moves with the partition that owns it.

Inside the stage loop, writes go to the current event's pending writes (read back by
``get``) and reach the table only when the loop commits them; outside it (the dead
letter agent) they go straight to the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from faust.types import TableT

from app.main import app, settings
from app.processing import DELETED, PENDING, Pending


class Store:
    """One stage's records: one Faust table, one changelog topic."""

    def __init__(self, name: str, help_: str, table: TableT[Any, Any] | None = None) -> None:
        self.name = name
        if table is None:
            table = app.Table(name, default=None, partitions=settings.partitions, help=help_)
        self.table: TableT[Any, Any] = table
        self.dedupe_retention = settings.dedupe_retention
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}

    def keys_between(self, partition: int, start: str, stop: str, limit: int) -> list[str]:
        """Up to ``limit`` keys ``start <= key < stop`` of one local partition, in key order."""
        data: Any = getattr(self.table, "data", None)
        if data is None or not hasattr(data, "_db_for_partition"):
            return sorted(k for k in map(_key, self.table.keys()) if start <= k < stop)[:limit]
        out: list[str] = []
        for key, _ in _seek(data, data._db_for_partition(partition), start):
            if key >= stop or len(out) >= limit:
                break
            out.append(key)
        return out

    @property
    def changelog_topic(self) -> Any:
        return self.table.changelog_topic

    def apply(self, writes: list[list[Any]]) -> None:
        """Write ``[[key, value], ...]`` (value ``None``: delete) to the table, in order."""
        for key, value in writes:
            if value is None:
                self.table.pop(key, None)
            else:
                self.table[key] = value
            if self._watchers:
                for waiter in self._watchers.pop(key, ()):
                    if not waiter.done():
                        waiter.set_result(None)

    async def written(self, key: str, timeout: float) -> None:
        """Return when ``key`` is next written here through :meth:`apply`, or after ``timeout`` seconds."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._watchers.setdefault(key, [])
        waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            left = self._watchers.get(key)
            if left is not None and waiter in left:
                left.remove(waiter)
                if not left:
                    del self._watchers[key]


class View:
    """A mapping over the records of ``store`` whose keys start with ``prefix``."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    @property
    def changelog_topic(self) -> Any:
        return self.store.changelog_topic

    def _pending(self) -> Pending | None:
        pending = PENDING.get()
        return pending if pending is not None and pending.store is self.store else None

    def get(self, key: str, default: Any = None) -> Any:
        full = self.prefix + key
        pending = self._pending()
        if pending is not None and full in pending.writes:
            value = pending.writes[full]
            return default if value is DELETED else value
        value = self.store.table.get(full)
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def _write(self, key: str, value: Any) -> None:
        full = self.prefix + key
        pending = PENDING.get()
        if pending is None:
            self.store.apply([[full, None if value is DELETED else value]])
            return
        if pending.store is not self.store:
            raise RuntimeError(f"stage writing {pending.store.name} cannot write {self.store.name}:{full}")
        pending.writes[full] = value

    async def written(self, key: str, timeout: float) -> None:
        """Return when ``key`` is next written on this worker, or after ``timeout`` seconds."""
        await self.store.written(self.prefix + key, timeout)

    def __setitem__(self, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("a record cannot be None (use pop to delete)")
        self._write(key, value)

    def pop(self, key: str, default: Any = None) -> Any:
        value = self.get(key, default)
        self._write(key, DELETED)
        return value


def _key(k: Any) -> str:
    return k.decode() if isinstance(k, bytes) else str(k)


def _common_start(a: bytes, b: bytes) -> bytes:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _seek(data: Any, db: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(decoded key, raw value) of one RocksDB partition's keys starting with ``prefix``, in order.

    Keys are stored serialized (JSON: '"state/…"'): seek to the common start of any two
    serialized keys with this prefix, stop at the first key past it.
    """
    raw_prefix = _common_start(data._encode_key(prefix), data._encode_key(prefix + "~"))
    for k, v in db.items(from_key=raw_prefix):
        if not k.startswith(raw_prefix):
            return
        key = _key(data._decode_key(k))
        if not key.startswith(prefix):
            return
        yield key, v


def local_items(view: View) -> Iterator[tuple[str, Any]]:
    """Iterate the (key, value) pairs of ``view`` in the partitions this worker owns.

    On RocksDB this seeks to the prefix in each active partition instead of reading
    the whole store.
    """
    prefix = view.prefix
    data: Any = view.store.table.data
    if hasattr(data, "_dbs_for_actives"):
        for db in list(data._dbs_for_actives()):
            for key, raw in _seek(data, db, prefix):
                value = data._decode_value(raw) if raw is not None else None
                if value is not None:
                    yield key[len(prefix) :], value
        return
    for k, v in view.store.table.items():
        key = _key(k)
        if v is not None and key.startswith(prefix):
            yield key[len(prefix) :], v


#: The saga: order state, history, payment deadlines, status counts per partition.
order_records = Store("order_records", "Orders: read model, saga state, history, deadlines.")
#: Stock per product and each order's reservation of it.
stock_records = Store("stock_records", "Inventory: per-product stock and per-order reservations.")
#: Payments per order.
payment_records = Store("payment_records", "Payments.")
#: The confirmation sent per order.
notification_records = Store("notification_records", "Notifications sent.")
#: Analytics partial aggregates per partition.
analytics_records = Store("analytics_records", "Analytics per partition.")
#: The customer directory.
user_records = Store("user_records", "Customer directory.")

#: order id -> order read model and saga state (status, items, payment, line progress).
order_to_state = View(order_records, "state/")
#: order id -> epoch seconds by which a reserved order must be paid.
order_to_deadline = View(order_records, "deadline/")
#: order id -> the order's events in causal order.
order_to_history = View(order_records, "history/")
#: partition -> {status: count}.
partition_to_status_counts = View(order_records, "status_counts/")
#: product id -> {on_hand, reserved, sold}.
product_to_stock = View(stock_records, "stock/")
#: "product/order" -> {state, quantity}: one order's reservation of one product.
reservation_to_state = View(stock_records, "reservation/")
#: order id -> payment record.
order_to_payment = View(payment_records, "payment/")
#: order id -> the notification sent for it.
order_to_notification = View(notification_records, "notification/")
#: partition -> analytics partial (totals, one-minute windows, products).
partition_to_analytics = View(analytics_records, "partial/")
#: user id -> profile.
user_to_profile = View(user_records, "user/")

#: dead-letter id -> dead letter (with redrive status). One record per event: a table of its own.
dead_letter_to_state = app.Table(
    "dead_letter_to_state", default=None, partitions=settings.partitions, help="Dead letters."
)

STORES = (order_records, stock_records, payment_records, notification_records, analytics_records, user_records)


def table_items(table: TableT[Any, Any]) -> Iterator[tuple[str, Any]]:
    """Iterate the (key, value) pairs of a plain table in the partitions this worker owns."""
    for k, v in table.items():
        if v is not None:
            yield _key(k), v


def reservation_key(product_id: str, order_id: str) -> str:
    """Key of one order's reservation of one product."""
    return f"{product_id}/{order_id}"
