"""The rebuild's pure core: read models folded from topic contents with the live decisions.

No broker, no Faust, no table: every transition is the live stage's own function.

- **orders**: each order's messages on the orders topic, in topic order, go through
  :func:`app.domain.orders.decide` (its own events and commands are history, which
  ``decide`` ignores). The deadline timer's ``order.cancel`` is a local input of the saga
  and never reaches the topic; its outcome does (``order.rejected`` with reason
  ``reservation_timeout``, ``order.cancelled`` with reason ``payment_timeout``, caused by
  the command's derived id), so the command is put back from it: before the first input
  that took the order out of the status the timer acted on, or that answers a release of a
  line the order still holds reserved (only an ending order releases its lines: the saga
  handled that input after the timer), else where its outcome is.
- **stock**: the inventory topic's commands (``inventory.reserve`` / ``release`` /
  ``commit`` / ``restock`` / ``set_stock``) through :mod:`app.domain.inventory`, in topic
  order per product, one reservation record per (product, order).
- **analytics**: an order counts once its ``analytics.order_recorded`` is on the orders
  topic, with the ``order.confirmed`` that record names as its cause, through the
  per-key helpers of :mod:`app.domain.analytics` per partition (windows pruned as the
  stage prunes them), then merged and summarised.

Messages that the stages cannot read, or whose decision raises, are dead-lettered live
and skipped here; an envelope id counts once it has been applied, so a later copy (a
redelivery) is skipped but a redriven copy of a dead-lettered message is applied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from app.domain import analytics as analytics_domain
from app.domain import inventory as inventory_domain
from app.domain import orders as orders_domain
from app.domain.common import INVENTORY, ORDERS
from schemas.envelope import Envelope, derived_id, make
from schemas.registry import read as decode

#: The topics the read models are rebuilt from (logical names).
SOURCES = (ORDERS, INVENTORY)
LINE_COMMANDS = {
    "inventory.reserve": inventory_domain.reserve,
    "inventory.release": inventory_domain.release,
    "inventory.commit": inventory_domain.commit,
}
STOCK_COMMANDS = frozenset({"inventory.restock", "inventory.set_stock"})
#: The saga's events that end an order.
ENDS = frozenset({"order.cancelled", "order.rejected"})
#: The deadline timer's outcomes: (event type, reason) -> (the timer command's reason, the status it acts on).
TIMER_OUTCOMES = {
    ("order.rejected", "reservation_timeout"): ("pending_timeout", "pending"),
    ("order.cancelled", "payment_timeout"): ("payment_timeout", "reserved"),
}


class Message(NamedTuple):
    """One message as read from a topic: key (text), JSON-decoded value (``None`` if unreadable), partition."""

    key: str | None
    value: Any
    partition: int = 0


@dataclass
class Models:
    """The rebuilt read models, as the API renders them, and what went into them."""

    orders: dict[str, dict[str, Any]]
    stock: dict[str, dict[str, Any]]
    analytics: dict[str, Any]
    stats: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the models as one JSON-ready dict (orders and products sorted by id)."""
        return {
            "orders": dict(sorted(self.orders.items())),
            "stock": dict(sorted(self.stock.items())),
            "analytics": self.analytics,
            "stats": self.stats,
        }

    def count_line(self) -> str:
        """Return the final one-line count."""
        events = self.stats.get("events", 0)
        return f"rebuilt {len(self.orders)} orders, {len(self.stock)} products from {events} events"


# --- reading messages -------------------------------------------------------------------


def messages(items: Iterable[Any]) -> Iterator[Message]:
    """Accept :class:`Message`, ``(key, value[, partition])`` tuples or bare envelope dicts."""
    for item in items:
        if isinstance(item, Message):
            yield item
        elif isinstance(item, tuple):
            yield Message(*item)
        else:
            yield Message(None, item)


def envelopes(items: Iterable[Any], topic: str, stats: Counter[str]) -> Iterator[tuple[Message, Envelope]]:
    """Decode each message as the stages of ``topic`` do; count (and skip) what they would dead-letter."""
    for msg in messages(items):
        stats["messages"] += 1
        try:
            env = decode(msg.value, topic)
        except Exception:  # noqa: BLE001 - the stages dead-letter whatever they cannot read; so does the rebuild
            stats["unreadable"] += 1
            continue
        yield msg, env


def order_id_of(env: Envelope) -> str:
    """The order an envelope is about, by the saga's rule: payload ``order_id``, else correlation id."""
    value = (env.get("payload") or {}).get("order_id")
    return str(value) if value else str(env.get("correlation_id") or env["entity_id"])


# --- orders -----------------------------------------------------------------------------


@dataclass
class _Timer:
    """A deadline timer's ``order.cancel``, put back from its outcome on the topic."""

    at: int  # index of the outcome in the order's messages
    status: str  # the status the timer acted on
    command: Envelope
    applied: bool = False


def _timers(order_id: str, envs: list[Envelope]) -> list[_Timer]:
    """The timer commands the saga handled for this order: outcomes whose cause is not on the topic."""
    ids = {e["id"] for e in envs}
    timers: list[_Timer] = []
    for at, env in enumerate(envs):
        timer = TIMER_OUTCOMES.get((env["type"], str(env["payload"].get("reason"))))
        if timer is None:
            continue
        reason, status = timer
        command_id = derived_id(f"{reason}/{order_id}", 0)
        if (
            env.get("causation_id") != command_id
            or command_id in ids
            or any(t.command["id"] == command_id for t in timers)
        ):
            continue  # not the timer's doing, or its command is on the topic after all
        payload = {"order_id": order_id, "reason": reason}
        command = make(
            "order.cancel",
            "order",
            order_id,
            payload,
            correlation_id=order_id,
            event_id=command_id,
            timestamp=env["timestamp"],
        )
        timers.append(_Timer(at, status, command))
    return timers


@dataclass
class OrderFold:
    """One order folded through the saga's decisions; what it confirmed, for analytics."""

    state: orders_domain.OrderState | None = None
    #: The ``order.confirmed`` payload :func:`~app.domain.orders.decide` emitted when it confirmed the order.
    confirmed: dict[str, Any] | None = None


def fold_order(
    order_id: str,
    envs: list[Envelope],
    payment_timeout: float,
    pending_timeout: float | None,
    stats: Counter[str],
) -> OrderFold:
    """Fold one order's messages (topic order) with :func:`app.domain.orders.decide`, timers put back."""
    out = OrderFold()
    applied: set[str] = set()
    timers = _timers(order_id, envs)
    stats["timer_commands"] += len(timers)

    def apply(env: Envelope) -> None:
        if env["id"] in applied:
            stats["duplicates"] += 1
            return
        try:
            decision = orders_domain.decide(out.state, env, payment_timeout, pending_timeout)
        except (KeyError, TypeError, ValueError):
            stats["dead_lettered"] += 1  # the saga dead-letters it; the order is unchanged
            return
        applied.add(env["id"])
        if decision.state is not None:
            out.state = decision.state
        for emit in decision.emits:
            if emit.type == "order.confirmed":
                out.confirmed = emit.payload

    def leaves(env: Envelope, status: str) -> bool:
        """Whether the saga had the timer's command before ``env``: ``env`` would take the order out of
        ``status`` or end it, or it answers the release of a line the order holds reserved."""
        if out.state is None or out.state["status"] != status or env["id"] in applied:
            return False
        if env["type"] == "inventory.released" and orders_domain.closing(out.state) is None:
            line = out.state["lines"].get(str(env["payload"].get("product_id")))
            if line == "reserved":
                return True
        try:
            after = orders_domain.decide(out.state, env, payment_timeout, pending_timeout).state
        except (KeyError, TypeError, ValueError):
            return False
        # Out of ``status``, or ending (an order keeps its status while its lines are given back).
        return after is not None and (after["status"] != status or orders_domain.closing(after) is not None)

    for i, env in enumerate(envs):
        for timer in timers:
            if not timer.applied and (timer.at == i or (timer.at > i and leaves(env, timer.status))):
                timer.applied = True
                if timer.at != i:
                    stats["timer_commands_moved"] += 1
                apply(timer.command)
        if env["type"] in ENDS and out.state is not None and orders_domain.closing(out.state) is not None:
            # The saga's end is on the topic here while the fold still waits for releases: the
            # saga ended the order then. Either a release never answered and the release
            # timeout ended it (the end's id derives from that timer's command, stamped about
            # when the end was), or the saga's timer ended it at once, before it had handled
            # the reservations the fold has (the order's last change is then the fold's).
            stats["ends_put_back"] += 1
            release_timer = orders_domain.deadline_cancel(order_id, orders_domain.CLOSING, env["timestamp"])
            touched = out.state["updated_at"]
            apply(release_timer)
            if env["id"] != derived_id(release_timer["id"], 0):
                out.state["updated_at"] = touched
        apply(env)
    return out


# --- stock ------------------------------------------------------------------------------


@dataclass
class StockFold:
    """Per-product stock and per-(product, order) reservations, as the inventory stage keeps them."""

    stock: dict[str, inventory_domain.Stock] = field(default_factory=dict)
    reservations: dict[tuple[str, str], inventory_domain.Reservation] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)

    def apply(self, env: Envelope, stats: Counter[str]) -> None:
        """Apply one inventory command with the inventory stage's decision; skip what it would dead-letter."""
        type_ = env["type"]
        if type_ not in LINE_COMMANDS and type_ not in STOCK_COMMANDS:
            return  # the stage's own events (``inventory.restocked``)
        if env["id"] in self.applied:
            stats["duplicates"] += 1
            return
        try:
            if type_ in STOCK_COMMANDS:
                product_id = env["entity_id"]
                rkey = None
                decision = inventory_domain.restock(self._of(product_id), env)
            else:
                p = env["payload"]
                product_id = str(p["product_id"])
                rkey = (product_id, str(p["order_id"]))
                decision = LINE_COMMANDS[type_](self._of(product_id), self.reservations.get(rkey), env)
        except (KeyError, TypeError, ValueError):
            stats["dead_lettered"] += 1  # includes StockError: the stage dead-letters the command
            return
        self.applied.add(env["id"])
        if rkey is not None and decision.reservation is not None:
            self.reservations[rkey] = decision.reservation
        if decision.stock is not None:
            self.stock[product_id] = decision.stock

    def _of(self, product_id: str) -> inventory_domain.Stock:
        return self.stock.get(product_id) or inventory_domain.empty_stock()


# --- analytics --------------------------------------------------------------------------


@dataclass
class PartitionAnalytics:
    """One partition's aggregates as the analytics stage keeps them, one record per key."""

    total: dict[str, Any] = field(default_factory=analytics_domain.empty_total)
    windows: dict[str, dict[str, int]] = field(default_factory=dict)
    products: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self, payload: dict[str, Any]) -> None:
        """Add one confirmed order, pruning old windows when it opens a new one."""
        self.total = analytics_domain.add_total(self.total, payload)
        window = analytics_domain.window_start(payload["confirmed_at"])
        previous = self.windows.get(window)
        self.windows[window] = analytics_domain.add_window(previous or analytics_domain.empty_window(), payload)
        if previous is None:
            cutoff = analytics_domain.oldest_kept(payload["confirmed_at"])
            self.windows = {w: v for w, v in self.windows.items() if w >= cutoff}
        for item in payload["items"]:
            pid = str(item["product_id"])
            self.products[pid] = analytics_domain.add_line(self.products.get(pid), item, payload.get("currency"))

    def partial(self) -> analytics_domain.Partial:
        """This partition's aggregates in the shape :func:`app.domain.analytics.merge` adds."""
        return {**self.total, "windows": dict(self.windows), "products": dict(self.products)}


# --- all three --------------------------------------------------------------------------


def rebuild(
    events_by_topic: Mapping[str, Iterable[Any]],
    payment_timeout: float = 30.0,
    pending_timeout: float | None = None,
) -> Models:
    """Rebuild orders, stock and analytics from the messages of the orders and inventory topics.

    ``events_by_topic`` maps the logical topic name (``"orders"``, ``"inventory"``) to
    its messages in topic order per partition: :class:`Message`, ``(key, value[,
    partition])`` tuples or bare envelope dicts.
    """
    stats: Counter[str] = Counter()

    by_order: dict[str, list[Envelope]] = {}
    confirmations: dict[str, dict[str, Any]] = {}  # order.confirmed event id -> payload
    recordings: list[tuple[int, str, Envelope]] = []  # (partition, order, analytics.order_recorded), topic order
    for msg, env in envelopes(events_by_topic.get(ORDERS, ()), ORDERS, stats):
        order_id = order_id_of(env)
        by_order.setdefault(order_id, []).append(env)
        if env["type"] == "order.confirmed":
            confirmations.setdefault(env["id"], env["payload"])
        elif env["type"] == "analytics.order_recorded":
            recordings.append((msg.partition, order_id, env))

    folds: dict[str, OrderFold] = {}
    for order_id, envs in by_order.items():
        folded = fold_order(order_id, envs, payment_timeout, pending_timeout, stats)
        if folded.state is not None:
            folds[order_id] = folded

    stock = StockFold()
    for _, env in envelopes(events_by_topic.get(INVENTORY, ()), INVENTORY, stats):
        stock.apply(env, stats)

    partitions: dict[int, PartitionAnalytics] = {}
    counted: set[str] = set()
    for partition, order_id, recorded in recordings:
        if order_id in counted:
            continue  # the stage counts an order once
        payload = confirmations.get(str(recorded.get("causation_id")))
        if payload is None or "items" not in payload:
            # Its cause is not on this topic (the older ``analytics.record`` command): what the saga confirmed.
            saga = folds.get(order_id)
            payload = saga.confirmed if saga else None
        if payload is None:
            stats["analytics_unmatched"] += 1
            continue
        counted.add(order_id)
        partitions.setdefault(partition, PartitionAnalytics()).record(payload)
    stats["analytics_pending"] = sum(1 for o, f in folds.items() if f.confirmed is not None and o not in counted)
    stats["events"] = stats["messages"] - stats["unreadable"] - stats["duplicates"]

    states = {order_id: f.state for order_id, f in folds.items() if f.state is not None}
    partial = analytics_domain.merge([p.partial() for p in partitions.values()])
    by_status = analytics_domain.merge_counts([Counter(s["status"] for s in states.values())])
    return Models(
        orders={oid: orders_domain.to_view(s) for oid, s in states.items()},
        stock={pid: inventory_domain.to_view(pid, s) for pid, s in stock.stock.items()},
        analytics=analytics_domain.summary(partial, by_status),
        stats={k: stats[k] for k in sorted(stats)},
    )


def compare(rebuilt: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """List every difference between two ``{"orders", "stock", "analytics"}`` model dicts."""
    diffs: list[str] = []
    r_orders, l_orders = rebuilt["orders"], live["orders"]
    for oid in sorted(set(r_orders) | set(l_orders)):
        if oid not in l_orders:
            diffs.append(f"order {oid}: only rebuilt ({r_orders[oid]['status']})")
        elif oid not in r_orders:
            diffs.append(f"order {oid}: only live ({l_orders[oid]['status']})")
        else:
            diffs.extend(f"order {oid}: {d}" for d in _field_diffs(r_orders[oid], l_orders[oid]))
    r_stock, l_stock = rebuilt["stock"], live["stock"]
    for pid in sorted(set(r_stock) | set(l_stock)):
        r = r_stock.get(pid) or inventory_domain.to_view(pid, None)
        lv = l_stock.get(pid) or inventory_domain.to_view(pid, None)
        diffs.extend(f"stock {pid}: {d}" for d in _field_diffs(r, lv))
    diffs.extend(f"analytics: {d}" for d in _field_diffs(rebuilt["analytics"], live["analytics"]))
    return diffs


def _field_diffs(rebuilt: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    return [
        f"{k}: rebuilt {rebuilt.get(k)!r} != live {live.get(k)!r}"
        for k in sorted(set(rebuilt) | set(live))
        if rebuilt.get(k) != live.get(k)
    ]
