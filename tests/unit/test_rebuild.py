"""The rebuild's pure core: read models from hand-made topic contents, no broker.

A small in-memory world runs the live stages' decisions (saga, inventory, a fake
gateway, analytics) with the agents' dedupe rules and writes the orders and
inventory topics as the workers would; the rebuild from those topics must equal the
world's tables, duplicates included.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter, deque
from itertools import count
from pathlib import Path
from typing import Any

from app import rebuild as rb
from app.domain import analytics, inventory, orders
from app.domain.common import ANALYTICS, INVENTORY, NOTIFICATIONS, ORDERS, PAYMENTS, Emit
from schemas.envelope import Envelope, derived_id, make
from schemas.registry import current_version

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "order_placed_v1"


def ts(second: int) -> str:
    """Return an ISO timestamp ``second`` seconds after 12:00:00 on 2024-05-01."""
    minutes, seconds = divmod(second, 60)
    hours, minutes = divmod(minutes, 60)
    return f"2024-05-01T{12 + hours:02d}:{minutes:02d}:{seconds:02d}.000Z"


def placed(order_id: str, lines: list[tuple[str, int, int]], *, token: str = "tok_ok", second: int = 0) -> Envelope:
    """Build a current-version ``order.placed``."""
    items = [{"product_id": p, "quantity": q, "price_cents": c} for p, q, c in lines]
    payload = {
        "order_id": order_id,
        "user_id": "u1",
        "user_email": "ada@example.com",
        "items": items,
        "total_cents": sum(q * c for _, q, c in lines),
        "currency": "USD",
        "payment": {"method": "card", "token": token, "last4": "4242"},
    }
    return make(
        "order.placed",
        "order",
        order_id,
        payload,
        correlation_id=order_id,
        event_id=derived_id(f"placed/{order_id}", 0),
        timestamp=ts(second),
        version=2,
    )


def event(type_: str, order_id: str, second: int, **payload: Any) -> Envelope:
    """Build an envelope about ``order_id`` on the orders topic."""
    payload = {"order_id": order_id, **payload}
    return make(type_, "order", order_id, payload, correlation_id=order_id, timestamp=ts(second))


def line(type_: str, order_id: str, product_id: str, quantity: int, second: int, **extra: Any) -> Envelope:
    """Build a per-line inventory result about ``order_id``."""
    payload = {"order_id": order_id, "product_id": product_id, "quantity": quantity, **extra}
    return make(type_, "product", product_id, payload, correlation_id=order_id, timestamp=ts(second))


def restocked(product_id: str, delta: int, on_hand: int) -> Envelope:
    """Build an ``inventory.restocked`` as the inventory stage writes it."""
    payload = {"product_id": product_id, "delta": delta, "on_hand": on_hand}
    return make("inventory.restocked", "product", product_id, payload, correlation_id=product_id)


def confirmed_history(order_id: str = "o1") -> list[Envelope]:
    """The orders-topic messages of one two-line order that was paid and recorded."""
    pid = f"pay_{order_id}"
    return [
        placed(order_id, [("p1", 2, 1250), ("p2", 1, 499)], second=1),
        line("inventory.reserved", order_id, "p1", 2, 2),
        line("inventory.reserved", order_id, "p2", 1, 3),
        event("payment.processed", order_id, 4, payment_id=pid, charge_id="ch_1"),
        line("inventory.committed", order_id, "p1", 2, 5),
        line("inventory.committed", order_id, "p2", 1, 5),
        event("notification.sent", order_id, 6),
        event("analytics.order_recorded", order_id, 6, total_cents=2999, currency="USD"),
    ]


STOCK = [restocked("p1", 10, 10), restocked("p2", 5, 5)]


def test_confirmed_order_stock_and_analytics() -> None:
    history = confirmed_history()
    models = rb.rebuild({ORDERS: history, INVENTORY: STOCK})

    assert models.orders == {"o1": orders.to_view(orders.fold(history, 30.0) or {})}
    view = models.orders["o1"]
    assert view["status"] == "confirmed"
    assert view["total"] == "29.99"
    assert view["payment"] == {"status": "charged", "last4": "4242", "payment_id": "pay_o1"}
    assert models.stock == {
        "p1": {"product_id": "p1", "on_hand": 8, "reserved": 0, "sold": 2, "available": 8},
        "p2": {"product_id": "p2", "on_hand": 4, "reserved": 0, "sold": 1, "available": 4},
    }
    summary = models.analytics
    assert summary["orders_by_status"] == {"confirmed": 1}
    assert summary["revenue"] == {"total": "29.99", "currency": "USD"}
    assert summary["orders_recorded"] == 1
    assert summary["revenue_per_minute"] == [{"window_start": "2024-05-01T12:00:00Z", "orders": 1, "revenue": "29.99"}]
    assert summary["top_products"] == [
        {"product_id": "p1", "units": 2, "revenue": "25.00"},
        {"product_id": "p2", "units": 1, "revenue": "4.99"},
    ]
    assert models.count_line() == "rebuilt 1 orders, 2 products from 10 events"


def test_duplicates_count_once() -> None:
    history = confirmed_history()
    # Redelivered copies after a crash: same ids, anywhere later in the partition.
    noisy = [*history[:3], history[1], history[2], *history[3:], *copy.deepcopy(history), history[3]]
    models = rb.rebuild({ORDERS: noisy, INVENTORY: [*STOCK, STOCK[0], copy.deepcopy(STOCK[1])]})
    clean = rb.rebuild({ORDERS: history, INVENTORY: STOCK})

    assert models.as_dict() | {"stats": None} == clean.as_dict() | {"stats": None}
    assert models.stock["p1"] == {"product_id": "p1", "on_hand": 8, "reserved": 0, "sold": 2, "available": 8}
    assert models.analytics["revenue"]["total"] == "29.99"
    assert models.stats["duplicates"] == len(noisy) - len(history) + 2
    assert models.stats["events"] == clean.stats["events"]


def test_a_line_reserved_twice_under_new_ids_is_applied_once() -> None:
    history = confirmed_history()
    again = line("inventory.reserved", "o1", "p1", 2, 3)  # another id: not the inventory stage's doing
    models = rb.rebuild({ORDERS: [*history[:2], again, *history[2:]], INVENTORY: STOCK})

    assert models.stock["p1"]["reserved"] == 0
    assert models.stock["p1"]["sold"] == 2
    assert models.stats["ignored_line_events"] == 1


def test_v1_order_placed_is_upcast() -> None:
    raw = json.loads((FIXTURES / "single_line_mug.json").read_text())
    order_id = raw["payload"]["order_id"]
    key = raw["correlation_id"]
    models = rb.rebuild(
        {
            ORDERS: [
                (key, raw),
                (key, line("inventory.reserved", order_id, "sku-mug-001", 2, 54)),
                (key, event("order.cancel", order_id, 55, reason="customer_cancelled")),
                (key, line("inventory.released", order_id, "sku-mug-001", 2, 56)),
            ],
            INVENTORY: [("sku-mug-001", restocked("sku-mug-001", 3, 3))],
        }
    )

    view = models.orders[order_id]
    assert view["items"] == [{"product_id": "sku-mug-001", "quantity": 2, "price": "12.50"}]
    assert view["total"] == "25.00"
    assert view["currency"] == "USD"
    assert view["status"] == "cancelled"
    assert view["reason"] == "customer_cancelled"
    assert models.stock["sku-mug-001"] == {
        "product_id": "sku-mug-001",
        "on_hand": 3,
        "reserved": 0,
        "sold": 0,
        "available": 3,
    }


def test_rejected_line_releases_the_others() -> None:
    history = [
        placed("o2", [("p1", 1, 100), ("p2", 9, 100)], second=1),
        line("inventory.reserved", "o2", "p1", 1, 2),
        line("inventory.rejected", "o2", "p2", 9, 2, requested=9, available=5),
    ]
    mid = rb.rebuild({ORDERS: history, INVENTORY: STOCK})
    assert mid.orders["o2"]["status"] == "rejected"
    assert mid.orders["o2"]["details"] == [{"product_id": "p2", "requested": 9, "available": 5}]
    assert mid.stock["p1"]["reserved"] == 1  # its release is still on the way

    done = rb.rebuild({ORDERS: [*history, line("inventory.released", "o2", "p1", 1, 3)], INVENTORY: STOCK})
    assert done.stock["p1"] == {"product_id": "p1", "on_hand": 10, "reserved": 0, "sold": 0, "available": 10}
    assert done.stock["p2"] == {"product_id": "p2", "on_hand": 5, "reserved": 0, "sold": 0, "available": 5}
    assert done.analytics["orders_by_status"] == {"rejected": 1}
    assert done.analytics["revenue"]["total"] == "0.00"


def test_restock_and_set_stock_deltas_add_up() -> None:
    events = [restocked("p9", 10, 10), restocked("p9", -4, 6), restocked("p9", 5, 11)]
    models = rb.rebuild({INVENTORY: [("p9", e) for e in events]})
    assert models.stock == {"p9": inventory.to_view("p9", {"on_hand": 11, "reserved": 0, "sold": 0})}
    assert models.orders == {}


def test_analytics_counts_an_order_once_it_is_recorded() -> None:
    history = confirmed_history()
    unrecorded = [e for e in history if e["type"] != "analytics.order_recorded"]
    models = rb.rebuild({ORDERS: unrecorded, INVENTORY: STOCK})

    assert models.orders["o1"]["status"] == "confirmed"
    assert models.analytics["orders_by_status"] == {"confirmed": 1}
    assert models.analytics["revenue"]["total"] == "0.00"
    assert models.stats["analytics_pending"] == 1


def test_unreadable_and_unknown_messages_are_skipped() -> None:
    history = confirmed_history()
    junk: list[Any] = [
        ("o1", None),
        ("o1", {"id": "x", "type": "order.exploded", "entity_id": "o1", "version": 1, "payload": {}}),
        ("o1", {"id": "y", "type": "order.placed", "entity_id": "o1", "version": 9, "payload": {}}),
        ("o1", ["not", "an", "envelope"]),
    ]
    models = rb.rebuild({ORDERS: [*junk, *history], INVENTORY: STOCK})
    assert models.orders["o1"]["status"] == "confirmed"
    assert models.stats["unreadable"] == 4


def test_compare_lists_every_difference() -> None:
    models = rb.rebuild({ORDERS: confirmed_history(), INVENTORY: STOCK}).as_dict()
    live = copy.deepcopy(models)
    assert rb.compare(models, live) == []

    live["orders"]["o1"]["status"] = "shipped"
    live["orders"]["o9"] = {"order_id": "o9", "status": "pending"}
    live["stock"]["p1"]["sold"] = 3
    live["stock"]["p3"] = inventory.to_view("p3", None)  # an untouched product reads as zeros: no difference
    live["analytics"]["revenue"]["total"] = "1.00"
    diffs = rb.compare(models, live)
    assert diffs == [
        "order o1: status: rebuilt 'confirmed' != live 'shipped'",
        "order o9: only live (pending)",
        "stock p1: sold: rebuilt 2 != live 3",
        "analytics: revenue: rebuilt {'total': '29.99', 'currency': 'USD'}"
        " != live {'total': '1.00', 'currency': 'USD'}",
    ]


# --- the rebuild equals what the live stages keep -----------------------------------


class World:
    """The stages' decisions with the agents' dedupe rules, writing the orders and inventory topics."""

    def __init__(self, rng: random.Random, duplicate_rate: float) -> None:
        self.rng = rng
        self.duplicate_rate = duplicate_rate
        self.clock = count()
        self.log: dict[str, list[tuple[str, Envelope]]] = {ORDERS: [], INVENTORY: []}
        self.queue: deque[tuple[str, str, Envelope]] = deque()
        self.seen: dict[str, set[str]] = {t: set() for t in (ORDERS, INVENTORY, PAYMENTS, ANALYTICS, NOTIFICATIONS)}
        self.order_to_state: dict[str, orders.OrderState] = {}
        self.product_to_stock: dict[str, inventory.Stock] = {}
        self.reservations: dict[str, Any] = {}
        self.partial = analytics.empty_partial()
        self.counts: dict[str, int] = {}

    def now(self) -> str:
        return ts(next(self.clock) * 3)

    def send(self, topic: str, key: str, env: Envelope) -> None:
        self.queue.append((topic, key, env))
        if topic in self.log:
            self.log[topic].append((key, env))
            if self.rng.random() < self.duplicate_rate:
                # A redelivered send after a crash: the same message once more.
                self.queue.append((topic, key, copy.deepcopy(env)))
                self.log[topic].append((key, copy.deepcopy(env)))

    def emit(self, emits: list[Emit], cause: Envelope) -> None:
        for i, e in enumerate(emits):
            env = make(
                e.type,
                e.entity_type,
                e.entity_id,
                e.payload,
                correlation_id=cause["correlation_id"],
                causation_id=cause["id"],
                event_id=derived_id(cause["id"], i),
                timestamp=self.now(),
                version=current_version(e.type),
            )
            self.send(e.topic, e.key, env)

    def run(self) -> None:
        while self.queue:
            topic, key, env = self.queue.popleft()
            if env["id"] in self.seen[topic]:
                continue
            self.seen[topic].add(env["id"])
            getattr(self, f"on_{topic}")(key, env)

    def on_orders(self, key: str, env: Envelope) -> None:
        state = self.order_to_state.get(key)
        decision = orders.decide(state, env, 30.0)
        if decision.state is None:
            return
        self.order_to_state[key] = decision.state
        self.counts = analytics.status_delta(self.counts, state["status"] if state else None, decision.state["status"])
        self.emit(decision.emits, env)

    def on_inventory(self, key: str, env: Envelope) -> None:
        stock = self.product_to_stock.get(key) or inventory.empty_stock()
        if env["type"] == "inventory.restocked":
            return
        if env["type"] in ("inventory.restock", "inventory.set_stock"):
            decision = inventory.restock(stock, env)
        else:
            rkey = f"{key}/{env['payload']['order_id']}"
            fn = {"inventory.reserve": inventory.reserve, "inventory.release": inventory.release}.get(env["type"])
            decision = (fn or inventory.commit)(stock, self.reservations.get(rkey), env)
            if decision.reservation is not None:
                self.reservations[rkey] = decision.reservation
        if decision.stock is not None:
            self.product_to_stock[key] = decision.stock
        self.emit(decision.emits, env)

    def on_payments(self, key: str, env: Envelope) -> None:
        p = env["payload"]
        base = {"order_id": p["order_id"], "payment_id": p["payment_id"], "amount_cents": p["amount_cents"]}
        if p["token"] == "tok_ok":
            emit = Emit(ORDERS, key, "payment.processed", "payment", p["payment_id"], {**base, "charge_id": "ch"})
        else:
            emit = Emit(ORDERS, key, "payment.failed", "payment", p["payment_id"], {**base, "reason": "card_declined"})
        self.emit([emit], env)

    def on_analytics(self, key: str, env: Envelope) -> None:
        self.partial = analytics.record(self.partial, env["payload"])
        p = env["payload"]
        recorded = {"order_id": key, "total_cents": p["total_cents"], "currency": p["currency"]}
        self.emit([Emit(ORDERS, key, "analytics.order_recorded", "order", key, recorded)], env)

    def on_notifications(self, key: str, env: Envelope) -> None:
        order_id = env["payload"]["order_id"]
        self.emit([Emit(ORDERS, order_id, "notification.sent", "notification", order_id, {"order_id": order_id})], env)

    def command(self, topic: str, key: str, type_: str, payload: dict[str, Any]) -> None:
        self.send(topic, key, make(type_, "x", key, payload, correlation_id=key, timestamp=self.now()))

    def live(self) -> dict[str, Any]:
        return {
            "orders": {k: orders.to_view(s) for k, s in self.order_to_state.items()},
            "stock": {k: inventory.to_view(k, s) for k, s in self.product_to_stock.items()},
            "analytics": analytics.summary(self.partial, analytics.merge_counts([self.counts])),
        }


def test_rebuild_equals_the_live_stages_with_duplicates() -> None:
    rng = random.Random(11)
    world = World(rng, duplicate_rate=0.15)
    products = [f"p{i}" for i in range(6)]
    for i, pid in enumerate(products):
        world.command(INVENTORY, pid, "inventory.set_stock", {"product_id": pid, "on_hand": 4 if i < 2 else 60})
    world.command(INVENTORY, "p5", "inventory.restock", {"product_id": "p5", "quantity": 7})
    world.run()
    ids = []
    for n in range(120):
        order_id = f"o{n:03d}"
        ids.append(order_id)
        lines = [(pid, rng.randint(1, 3), rng.randint(1, 5000)) for pid in rng.sample(products, rng.randint(1, 3))]
        token = rng.choice(["tok_ok"] * 8 + ["tok_declined"] * 2)
        world.send(ORDERS, order_id, {**placed(order_id, lines, token=token), "timestamp": world.now()})
        if n % 17 == 0:
            world.command(ORDERS, order_id, "order.cancel", {"order_id": order_id, "reason": "customer_cancelled"})
        world.run()
    for order_id in ids[::5]:
        world.command(ORDERS, order_id, "order.ship", {"order_id": order_id, "carrier": "ups", "tracking_number": "1"})
    world.run()
    for order_id in ids[::10]:
        world.command(ORDERS, order_id, "order.deliver", {"order_id": order_id})
    world.run()

    models = rb.rebuild(world.log)
    live = world.live()
    assert rb.compare(models.as_dict(), live) == []
    assert models.as_dict()["orders"] == live["orders"]
    assert models.stock == live["stock"]
    assert models.analytics == live["analytics"]
    statuses = Counter(v["status"] for v in live["orders"].values())
    assert {"confirmed", "rejected", "cancelled", "shipped", "delivered"} <= set(statuses)
    assert models.stats["duplicates"] > 0
    assert "unreadable" not in models.stats
    assert len(live["analytics"]["revenue_per_minute"]) > 1
