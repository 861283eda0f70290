"""The rebuild's pure fold: read models from hand-made topic contents, no broker.

Hand-made histories pin each rule (orders through the saga, stock from the inventory
commands, analytics once recorded, the deadline timer's command put back from its
outcome). A small in-memory world then runs the live stages' decisions with the
agents' rules — the timer's command a local input that never reaches a topic, like the
engine's — and writes the orders and inventory topics as the workers would; the
rebuild from those topics must equal the world's tables, duplicates included.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter, deque
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from app import rebuild as rb
from app.domain import analytics, inventory, orders
from app.domain.common import INVENTORY, ORDERS, Emit
from app.rebuild import fold
from schemas.envelope import Envelope, derived_id, make
from schemas.registry import current_version, order_placed

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "order_placed_v1"
PAYMENT_TIMEOUT = 30.0
PENDING_TIMEOUT = 20.0


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
    return order_placed(order_id, payload, timestamp=ts(second))


def event(type_: str, order_id: str, second: int, *, cause: str | None = None, **payload: Any) -> Envelope:
    """Build an envelope about ``order_id`` on the orders topic."""
    payload = {"order_id": order_id, **payload}
    return make(type_, "order", order_id, payload, correlation_id=order_id, causation_id=cause, timestamp=ts(second))


def line(type_: str, order_id: str, product_id: str, quantity: int, second: int = 0, **extra: Any) -> Envelope:
    """Build a per-line inventory command (inventory topic) or result (orders topic) about ``order_id``."""
    payload = {"order_id": order_id, "product_id": product_id, "quantity": quantity, **extra}
    return make(type_, "product", product_id, payload, correlation_id=order_id, timestamp=ts(second))


def stock_command(type_: str, product_id: str, **payload: int) -> Envelope:
    """Build an ``inventory.set_stock`` / ``inventory.restock`` as the HTTP edge sends it."""
    return make(type_, "product", product_id, {"product_id": product_id, **payload}, correlation_id=product_id)


def processed(order_id: str, second: int) -> Envelope:
    pid = f"pay_{order_id}"
    return make(
        "payment.processed",
        "payment",
        pid,
        {"order_id": order_id, "payment_id": pid, "charge_id": "ch_1", "amount_cents": 2999, "currency": "USD"},
        correlation_id=order_id,
        timestamp=ts(second),
    )


def confirmed_event(order_id: str, second: int, lines: list[tuple[str, int, int]]) -> Envelope:
    """The saga's ``order.confirmed`` as it is on the orders topic."""
    items = [{"product_id": p, "quantity": q, "price_cents": c} for p, q, c in lines]
    total = sum(q * c for _, q, c in lines)
    return event(
        "order.confirmed",
        order_id,
        second,
        user_id="u1",
        user_email="ada@example.com",
        total=f"{total // 100}.{total % 100:02d}",
        total_cents=total,
        currency="USD",
        items=items,
        confirmed_at=ts(second),
    )


LINES = [("p1", 2, 1250), ("p2", 1, 499)]


def confirmed_history(order_id: str = "o1") -> list[Envelope]:
    """The orders-topic messages of one two-line order that was paid, committed, confirmed and recorded."""
    confirmed = confirmed_event(order_id, 6, LINES)
    return [
        placed(order_id, LINES, second=1),
        line("inventory.reserved", order_id, "p1", 2, 2),
        line("inventory.reserved", order_id, "p2", 1, 3),
        processed(order_id, 4),
        event("order.paid", order_id, 4, payment_id=f"pay_{order_id}", amount="29.99", currency="USD"),
        line("inventory.committed", order_id, "p1", 2, 5),
        line("inventory.committed", order_id, "p2", 1, 6),
        confirmed,
        event("notification.sent", order_id, 7, cause=confirmed["id"]),
        event("analytics.order_recorded", order_id, 7, cause=confirmed["id"], total_cents=2999, currency="USD"),
    ]


STOCK = [stock_command("inventory.set_stock", "p1", on_hand=10), stock_command("inventory.set_stock", "p2", on_hand=5)]


def inventory_commands(order_id: str = "o1") -> list[Envelope]:
    """The inventory-topic commands of :func:`confirmed_history` (the stage's outputs go to the orders topic)."""
    return [
        line("inventory.reserve", order_id, "p1", 2),
        line("inventory.reserve", order_id, "p2", 1),
        line("inventory.commit", order_id, "p1", 2),
        line("inventory.commit", order_id, "p2", 1),
    ]


def test_confirmed_order_stock_and_analytics() -> None:
    history = confirmed_history()
    restocked = make(
        "inventory.restocked", "product", "p1", {"product_id": "p1", "delta": 10, "on_hand": 10}, correlation_id="p1"
    )
    models = rb.rebuild({ORDERS: history, INVENTORY: [*STOCK, restocked, *inventory_commands()]})

    assert models.orders == {"o1": orders.to_view(orders.fold(history, PAYMENT_TIMEOUT) or {})}
    view = models.orders["o1"]
    assert view["status"] == "confirmed"
    assert view["updated_at"] == ts(6)
    assert view["total"] == "29.99"
    assert view["payment"] == {"status": "charged", "last4": "4242", "payment_id": "pay_o1"}
    assert models.stock == {
        "p1": {"product_id": "p1", "on_hand": 8, "reserved": 0, "sold": 2, "available": 8},
        "p2": {"product_id": "p2", "on_hand": 4, "reserved": 0, "sold": 1, "available": 4},
    }
    summary = models.analytics
    assert summary["orders_by_status"] == {"confirmed": 1}
    assert summary["revenue"] == {"total": "29.99", "currency": "USD", "by_currency": {"USD": "29.99"}}
    assert summary["orders_recorded"] == 1
    assert summary["revenue_per_minute"] == [{"window_start": "2024-05-01T12:00:00Z", "orders": 1, "revenue": "29.99"}]
    assert summary["top_products"] == [
        {"product_id": "p1", "units": 2, "revenue": "25.00"},
        {"product_id": "p2", "units": 1, "revenue": "4.99"},
    ]
    assert models.count_line() == "rebuilt 1 orders, 2 products from 17 events"


def test_a_paid_order_waits_for_its_commits() -> None:
    history = confirmed_history()[:6]  # paid, one line committed
    models = rb.rebuild({ORDERS: history, INVENTORY: [*STOCK, *inventory_commands()[:3]]})

    assert models.orders["o1"]["status"] == "paid"
    assert models.stock["p2"] == {"product_id": "p2", "on_hand": 5, "reserved": 1, "sold": 0, "available": 4}
    assert models.analytics["orders_by_status"] == {"paid": 1}
    assert models.analytics["orders_recorded"] == 0


def test_duplicates_count_once() -> None:
    history = confirmed_history()
    commands = [*STOCK, *inventory_commands()]
    # Redelivered copies after a crash: same ids, anywhere later in the partition.
    noisy = [*history[:3], history[1], history[2], *history[3:], *copy.deepcopy(history), history[3]]
    noisy_commands = [*commands[:3], commands[0], copy.deepcopy(commands[2]), *commands[3:], *commands]
    models = rb.rebuild({ORDERS: noisy, INVENTORY: noisy_commands})
    clean = rb.rebuild({ORDERS: history, INVENTORY: commands})

    assert models.as_dict() | {"stats": None} == clean.as_dict() | {"stats": None}
    assert models.stock["p1"] == {"product_id": "p1", "on_hand": 8, "reserved": 0, "sold": 2, "available": 8}
    assert models.analytics["revenue"]["total"] == "29.99"
    assert models.stats["duplicates"] == len(noisy) - len(history) + len(noisy_commands) - len(commands)
    assert models.stats["events"] == clean.stats["events"]


def test_a_line_reserved_twice_under_new_ids_is_reserved_once() -> None:
    again = line("inventory.reserve", "o1", "p1", 2)  # another id: a replayed command, answered the same
    commands = inventory_commands()
    models = rb.rebuild({ORDERS: confirmed_history(), INVENTORY: [*STOCK, commands[0], again, *commands[1:], again]})

    assert models.stock["p1"] == {"product_id": "p1", "on_hand": 8, "reserved": 0, "sold": 2, "available": 8}


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
            INVENTORY: [
                ("sku-mug-001", stock_command("inventory.restock", "sku-mug-001", quantity=3)),
                ("sku-mug-001", line("inventory.reserve", order_id, "sku-mug-001", 2)),
                ("sku-mug-001", line("inventory.release", order_id, "sku-mug-001", 2)),
            ],
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
    commands = [*STOCK, line("inventory.reserve", "o2", "p1", 1), line("inventory.reserve", "o2", "p2", 9)]
    mid = rb.rebuild({ORDERS: history, INVENTORY: commands})
    assert mid.orders["o2"]["status"] == "pending"  # rejected once its reserved line is back
    assert mid.stock["p1"]["reserved"] == 1  # its release is still on the way

    back = [*history, line("inventory.released", "o2", "p1", 1, 3)]
    done = rb.rebuild({ORDERS: back, INVENTORY: [*commands, line("inventory.release", "o2", "p1", 1)]})
    assert done.orders["o2"]["status"] == "rejected"
    assert done.orders["o2"]["details"] == [{"product_id": "p2", "requested": 9, "available": 5}]
    assert done.stock["p1"] == {"product_id": "p1", "on_hand": 10, "reserved": 0, "sold": 0, "available": 10}
    assert done.stock["p2"] == {"product_id": "p2", "on_hand": 5, "reserved": 0, "sold": 0, "available": 5}
    assert done.analytics["orders_by_status"] == {"rejected": 1}
    assert done.analytics["revenue"]["total"] == "0.00"


def test_a_product_only_ever_refused_has_no_stock_record() -> None:
    models = rb.rebuild({INVENTORY: [line("inventory.reserve", "o1", "ghost", 1)]})

    assert models.stock == {}


def test_restock_and_set_stock_go_through_the_inventory_domain() -> None:
    commands = [
        stock_command("inventory.set_stock", "p9", on_hand=10),
        stock_command("inventory.restock", "p9", quantity=5),
        stock_command("inventory.set_stock", "p9", on_hand=6),
        make(
            "inventory.restocked",
            "product",
            "p9",
            {"product_id": "p9", "delta": 99, "on_hand": 99},
            correlation_id="p9",
        ),
    ]
    models = rb.rebuild({INVENTORY: [("p9", e) for e in commands]})

    assert models.stock == {"p9": inventory.to_view("p9", {"on_hand": 6, "reserved": 0, "sold": 0})}
    assert models.orders == {}


def test_a_dead_lettered_stock_command_is_skipped_and_its_redriven_copy_applied() -> None:
    too_low = stock_command("inventory.set_stock", "p1", on_hand=1)
    commands = [
        STOCK[0],
        line("inventory.reserve", "o1", "p1", 2),
        too_low,  # 2 units are reserved: StockError, dead-lettered
        line("inventory.release", "o1", "p1", 2),
        copy.deepcopy(too_low),  # redriven once nothing is reserved
        stock_command("inventory.restock", "p1", quantity=0),  # refused by the domain
    ]
    models = rb.rebuild({INVENTORY: commands})

    assert models.stock["p1"] == {"product_id": "p1", "on_hand": 1, "reserved": 0, "sold": 0, "available": 1}
    assert models.stats["dead_lettered"] == 2
    assert "duplicates" not in models.stats or models.stats["duplicates"] == 0


def test_analytics_counts_an_order_once_it_is_recorded() -> None:
    history = confirmed_history()
    unrecorded = [e for e in history if e["type"] != "analytics.order_recorded"]
    models = rb.rebuild({ORDERS: unrecorded, INVENTORY: [*STOCK, *inventory_commands()]})

    assert models.orders["o1"]["status"] == "confirmed"
    assert models.analytics["orders_by_status"] == {"confirmed": 1}
    assert models.analytics["revenue"]["total"] == "0.00"
    assert models.stats["analytics_pending"] == 1


def test_analytics_records_the_confirmation_its_record_names() -> None:
    history = confirmed_history()
    recorded = history[-1]
    # A second recording of the same order (another id) is not counted twice.
    again = event("analytics.order_recorded", "o1", 8, cause=recorded["causation_id"], total_cents=2999)
    models = rb.rebuild({ORDERS: [*history, again], INVENTORY: STOCK})

    assert models.analytics["orders_recorded"] == 1
    assert models.analytics["revenue_per_minute"][0]["window_start"] == "2024-05-01T12:00:00Z"


def test_analytics_falls_back_to_what_the_saga_confirmed_when_the_cause_is_not_on_the_topic() -> None:
    history = [e for e in confirmed_history() if e["type"] != "order.confirmed"]
    models = rb.rebuild({ORDERS: history, INVENTORY: STOCK})

    assert models.analytics["orders_recorded"] == 1
    assert models.analytics["revenue"]["total"] == "29.99"
    assert models.analytics["top_products"][0] == {"product_id": "p1", "units": 2, "revenue": "25.00"}


def test_analytics_prunes_windows_per_partition_as_the_stage_does() -> None:
    def recorded_order(order_id: str, second: int) -> list[Envelope]:
        confirmed = confirmed_event(order_id, second, [("p1", 1, 100)])
        recorded = event("analytics.order_recorded", order_id, second, cause=confirmed["id"], total_cents=100)
        return [confirmed, recorded]

    early, late = recorded_order("a", 0), recorded_order("b", 121 * 60)
    other = recorded_order("c", 1)
    models = rb.rebuild(
        {ORDERS: [fold.Message("a", e, 0) for e in early + late] + [fold.Message("c", e, 1) for e in other]}
    )

    windows = [w["window_start"] for w in models.analytics["revenue_per_minute"]]
    # Partition 0 dropped 12:00 when 14:01 opened; partition 1 still holds its own 12:00.
    assert windows == ["2024-05-01T12:00:00Z", "2024-05-01T14:01:00Z"]
    assert models.analytics["revenue_per_minute"][0]["orders"] == 1
    assert models.analytics["orders_recorded"] == 3


def test_unreadable_and_unknown_messages_are_skipped() -> None:
    history = confirmed_history()
    junk: list[Any] = [
        ("o1", None),
        ("o1", {"id": "x", "type": "order.exploded", "entity_id": "o1", "version": 1, "payload": {}}),
        ("o1", {"id": "y", "type": "order.placed", "entity_id": "o1", "version": 9, "payload": {}}),
        ("o1", ["not", "an", "envelope"]),
    ]
    models = rb.rebuild({ORDERS: [*junk, *history], INVENTORY: [(None, b"\x00"), *STOCK]})
    assert models.orders["o1"]["status"] == "confirmed"
    assert models.stats["unreadable"] == 5


def test_compare_lists_every_difference() -> None:
    models = rb.rebuild({ORDERS: confirmed_history(), INVENTORY: [*STOCK, *inventory_commands()]}).as_dict()
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
        "analytics: revenue: rebuilt {'total': '29.99', 'currency': 'USD', 'by_currency': {'USD': '29.99'}}"
        " != live {'total': '1.00', 'currency': 'USD', 'by_currency': {'USD': '29.99'}}",
    ]


# --- the deadline timer: its command is local to the saga, only its outcome is on the topic ---


def timer_command(order_id: str, status: str, second: int) -> Envelope:
    """The saga's timer command for an order past its deadline in ``status`` (never sent to a topic)."""
    return orders.deadline_cancel(order_id, status, ts(second))


def emitted(e: Emit, cause: Envelope, i: int, timestamp: str, base: str | None = None) -> Envelope:
    """The ``i``-th emit of a decision on ``cause`` as a stage sends it (agents/_wiring.envelopes), at ``timestamp``."""
    return make(
        e.type,
        e.entity_type,
        e.entity_id,
        e.payload,
        correlation_id=cause["correlation_id"],
        causation_id=e.cause or cause["id"],
        event_id=derived_id(base or cause["id"], i),
        timestamp=timestamp,
        version=current_version(e.type),
    )


def saga(*handled: Envelope, local: Envelope | None = None) -> tuple[orders.OrderState, list[Envelope]]:
    """Handle ``handled`` in this order as the saga does; return the state and what the orders topic holds.

    The topic holds every input but the ``local`` timer command, each followed by the order
    events it caused (an order's end caused by the input that decided it).
    """
    state: orders.OrderState | None = None
    topic: list[Envelope] = []
    for env in handled:
        decision = orders.decide(state, env, PAYMENT_TIMEOUT, PENDING_TIMEOUT)
        state = decision.state if decision.state is not None else state
        if env is not local:
            topic.append(env)
        topic += [emitted(e, env, i, env["timestamp"]) for i, e in enumerate(decision.emits) if e.topic == ORDERS]
    assert state is not None
    return state, topic


def test_a_pending_timeout_is_put_back_from_its_outcome() -> None:
    start = [placed("o3", LINES, second=1), line("inventory.reserved", "o3", "p1", 2, 2)]
    command = timer_command("o3", "pending", 21)
    late = line("inventory.reserved", "o3", "p2", 1, 22)
    back = [line("inventory.released", "o3", "p1", 2, 23), line("inventory.released", "o3", "p2", 1, 24)]
    live, topic = saga(*start, command, late, *back, local=command)
    assert live["status"] == "rejected"
    assert [e["type"] for e in topic][-1] == "order.rejected"

    models = rb.rebuild({ORDERS: topic}, PAYMENT_TIMEOUT, PENDING_TIMEOUT)

    assert models.orders["o3"] == orders.to_view(live)
    assert models.orders["o3"]["reason"] == "reservation_timeout"
    assert models.stats["timer_commands"] == 1


def test_a_timer_that_ended_an_order_at_once_is_put_back_where_its_end_is() -> None:
    # Nothing was reserved yet when the timer fired: it ended the order at once; the
    # reservations on the topic before its end were handled after it and given straight back.
    start = [placed("o6", LINES, second=1)]
    waiting = [line("inventory.reserved", "o6", "p1", 2, 2), line("inventory.reserved", "o6", "p2", 1, 3)]
    command = timer_command("o6", "pending", 21)
    back = [line("inventory.released", "o6", "p1", 2, 23), line("inventory.released", "o6", "p2", 1, 24)]
    live, handled = saga(*start, command, *waiting, *back, local=command)
    assert live["status"] == "rejected"
    end = next(e for e in handled if e["type"] == "order.rejected")
    assert end["causation_id"] == command["id"]

    models = rb.rebuild({ORDERS: [*start, *waiting, end, *back]}, PAYMENT_TIMEOUT, PENDING_TIMEOUT)

    assert models.orders["o6"] == orders.to_view(live)
    assert models.stats["ends_put_back"] == 1


def test_an_input_on_the_topic_before_the_timers_outcome_but_handled_after_it() -> None:
    # The last line's answer was waiting in the saga's backlog when the timer fired.
    start = [placed("o4", LINES, second=1), line("inventory.reserved", "o4", "p1", 2, 2)]
    waiting = line("inventory.reserved", "o4", "p2", 1, 3)
    command = timer_command("o4", "pending", 21)
    back = [line("inventory.released", "o4", "p1", 2, 23), line("inventory.released", "o4", "p2", 1, 24)]
    live, topic = saga(*start, command, waiting, *back, local=command)
    assert live["status"] == "rejected"

    models = rb.rebuild({ORDERS: topic}, PAYMENT_TIMEOUT, PENDING_TIMEOUT)

    assert models.orders["o4"] == orders.to_view(live)
    assert models.stats["timer_commands_moved"] == 1


def test_a_payment_timeout_before_a_late_payment_is_put_back_and_refunds() -> None:
    start = [placed("o1", LINES, second=1), line("inventory.reserved", "o1", "p1", 2, 2)]
    start.append(line("inventory.reserved", "o1", "p2", 1, 3))
    late_payment = processed("o1", 40)
    command = timer_command("o1", "reserved", 33)
    back = [line("inventory.released", "o1", "p1", 2, 41), line("inventory.released", "o1", "p2", 1, 42)]
    live, _ = saga(*start, command, late_payment, *back, local=command)
    assert live["status"] == "cancelled" and live["payment"]["status"] == "refunded"

    for handled in ([late_payment, *back], [back[0], late_payment, back[1]]):
        state, topic = saga(*start, command, *handled, local=command)
        assert state == live
        models = rb.rebuild({ORDERS: topic}, PAYMENT_TIMEOUT, PENDING_TIMEOUT)
        assert models.orders["o1"] == orders.to_view(live)
        assert models.orders["o1"]["reason"] == "payment_timeout"


def test_an_end_by_the_release_timeout_is_put_back_from_the_topic() -> None:
    # A release never answered (its command dead-lettered): the release timeout ended the order.
    start = [placed("o7", LINES, second=1), line("inventory.reserved", "o7", "p1", 2, 2)]
    failure = make(
        "payment.failed",
        "payment",
        "pay_o7",
        {"order_id": "o7", "payment_id": "pay_o7", "reason": "card_declined"},
        correlation_id="o7",
        timestamp=ts(4),
    )
    start += [line("inventory.reserved", "o7", "p2", 1, 3), failure]
    back = line("inventory.released", "o7", "p1", 2, 5)
    release_timer = timer_command("o7", orders.CLOSING, 40)
    live, topic = saga(*start, back, release_timer, local=release_timer)
    assert (live["status"], live["reason"], live["updated_at"]) == ("cancelled", "card_declined", ts(40))

    models = rb.rebuild({ORDERS: topic}, PAYMENT_TIMEOUT, PENDING_TIMEOUT)

    assert models.orders["o7"] == orders.to_view(live)


def test_an_outcome_caused_by_a_command_on_the_topic_adds_no_timer() -> None:
    start = [placed("o5", LINES, second=1)]
    customer = event("order.cancel", "o5", 2, reason="customer_cancelled")
    cancelled = event("order.cancelled", "o5", 2, cause=customer["id"], reason="customer_cancelled")
    models = rb.rebuild({ORDERS: [*start, customer, cancelled]})

    assert models.orders["o5"]["reason"] == "customer_cancelled"
    assert "timer_commands" not in models.stats or models.stats["timer_commands"] == 0


# --- the rebuild equals what the live stages keep -----------------------------------


class World:
    """The stages' decisions with the agents' rules, writing the orders and inventory topics.

    As in the engine, the saga's deadline timer hands its ``order.cancel`` to the saga
    directly (never to a topic), and ``order.confirmed`` feeds both notifications and
    analytics from the orders topic.
    """

    def __init__(self, rng: random.Random, duplicate_rate: float) -> None:
        self.rng = rng
        self.duplicate_rate = duplicate_rate
        self.clock = count()
        self.log: dict[str, list[tuple[str, Envelope]]] = {ORDERS: [], INVENTORY: []}
        self.queue: deque[tuple[str, str, Envelope]] = deque()
        self.lost: set[str] = set()  # orders whose first reserve command never lands
        self.order_to_state: dict[str, orders.OrderState] = {}
        self.product_to_stock: dict[str, inventory.Stock] = {}
        self.records: dict[str, Any] = {}  # the inventory stage's reservation/ and restock/ records
        self.analytics: dict[str, Any] = {}  # the analytics stage's total, window/, product/, recorded/
        self.notified: set[str] = set()
        self.timer_at: dict[str, str] = {}  # order -> the instant of its timer command

    def now(self) -> str:
        return ts(next(self.clock) * 7)

    def send(self, topic: str, key: str, env: Envelope) -> None:
        order_id = env["payload"].get("order_id")
        if env["type"] == "inventory.reserve" and order_id in self.lost:
            self.lost.discard(order_id)  # its first line's command never landed (an aborted transaction)
            return
        self.queue.append((topic, key, env))
        if topic in self.log:
            self.log[topic].append((key, env))
            if self.rng.random() < self.duplicate_rate:
                # A redelivered send after a crash: the same message once more.
                self.queue.append((topic, key, copy.deepcopy(env)))
                self.log[topic].append((key, copy.deepcopy(env)))

    def emit(self, emits: list[Emit], cause: Envelope, stage: str = "") -> None:
        base = f"{cause['id']}/{stage}" if stage else cause["id"]
        for i, e in enumerate(emits):
            env = emitted(e, cause, i, self.now(), base)
            self.send(e.topic, e.key, env)

    def run(self, steps: int | None = None) -> None:
        n = 0
        while self.queue and (steps is None or n < steps):
            n += 1
            topic, key, env = self.queue.popleft()
            getattr(self, f"on_{topic}")(key, env)

    def on_orders(self, key: str, env: Envelope) -> None:
        if env["type"] == "order.confirmed":
            self.on_confirmed(key, env)
            return
        state = self.order_to_state.get(key)
        decision = orders.decide(state, env, PAYMENT_TIMEOUT, PENDING_TIMEOUT)
        if decision.state is not None:
            self.order_to_state[key] = decision.state
        self.emit(decision.emits, env)

    def expire(self, order_id: str) -> None:
        """The saga's timer: a local ``order.cancel`` for an order past its deadline."""
        state = self.order_to_state[order_id]
        # What the deadline index says, as the worker's timer reads it: an ending order is closing.
        command = orders.deadline_cancel(
            order_id, orders.CLOSING if state.get("closing") else state["status"], self.now()
        )
        decision = orders.decide(state, command, PAYMENT_TIMEOUT, PENDING_TIMEOUT)
        if decision.state is not None:
            self.timer_at[order_id] = command["timestamp"]
            self.order_to_state[order_id] = decision.state
            self.emit(decision.emits, command)

    def on_inventory(self, key: str, env: Envelope) -> None:
        if env["type"] == "inventory.restocked":
            return
        stock = self.product_to_stock.get(key) or inventory.empty_stock()
        if env["type"] in ("inventory.restock", "inventory.set_stock"):
            if f"restock/{env['id']}" in self.records:
                return
            try:
                decision = inventory.restock(stock, env)
            except inventory.StockError:
                return  # dead-lettered
            self.records[f"restock/{env['id']}"] = 1
        else:
            order_id = env["payload"]["order_id"]
            rkey = f"reservation/{key}/{order_id}"
            fn = {"inventory.reserve": inventory.reserve, "inventory.release": inventory.release}.get(env["type"])
            decision = (fn or inventory.commit)(stock, self.records.get(rkey), env)
            if decision.reservation is not None:
                self.records[rkey] = decision.reservation
        if decision.stock is not None:
            self.product_to_stock[key] = decision.stock
        self.emit(decision.emits, env)

    def on_payments(self, key: str, env: Envelope) -> None:
        if env["type"] != "payment.charge":
            return
        p = env["payload"]
        base = {"order_id": p["order_id"], "payment_id": p["payment_id"], "amount_cents": p["amount_cents"]}
        if p["token"] == "tok_hang":
            return  # the gateway never answers: the payment deadline will
        if p["token"] == "tok_ok":
            emit = Emit(ORDERS, key, "payment.processed", "payment", p["payment_id"], {**base, "charge_id": "ch"})
        else:
            emit = Emit(ORDERS, key, "payment.failed", "payment", p["payment_id"], {**base, "reason": "card_declined"})
        self.emit([emit], env)

    def on_confirmed(self, key: str, env: Envelope) -> None:
        """Notifications and analytics, both fed by ``order.confirmed`` (as agents/analytics.py keeps it)."""
        p = env["payload"]
        if key not in self.notified:
            self.notified.add(key)
            sent = Emit(ORDERS, key, "notification.sent", "notification", key, {"order_id": key})
            self.emit([sent], env, stage="notifications")
        if f"recorded/{key}" in self.analytics:
            return
        a = self.analytics
        a["total"] = analytics.add_total(a.get("total") or analytics.empty_total(), p)
        window = analytics.window_start(p["confirmed_at"])
        previous = a.get(f"window/{window}")
        a[f"window/{window}"] = analytics.add_window(previous or analytics.empty_window(), p)
        if previous is None:
            cutoff = analytics.oldest_kept(p["confirmed_at"])
            for k in [k for k in a if k.startswith("window/") and k[len("window/") :] < cutoff]:
                del a[k]
        for item in p["items"]:
            a[f"product/{item['product_id']}"] = analytics.add_line(a.get(f"product/{item['product_id']}"), item)
        a[f"recorded/{key}"] = 1
        recorded = {"order_id": key, "total_cents": p["total_cents"], "currency": p["currency"]}
        self.emit([Emit(ORDERS, key, "analytics.order_recorded", "order", key, recorded)], env, stage="analytics")

    def command(self, topic: str, key: str, type_: str, payload: dict[str, Any]) -> None:
        self.send(topic, key, make(type_, "product", key, payload, correlation_id=key, timestamp=self.now()))

    def live(self) -> dict[str, Any]:
        a = self.analytics
        partial = {
            **(a.get("total") or analytics.empty_total()),
            "windows": {k[len("window/") :]: v for k, v in a.items() if k.startswith("window/")},
            "products": {k[len("product/") :]: v for k, v in a.items() if k.startswith("product/")},
        }
        counts = Counter(s["status"] for s in self.order_to_state.values())
        return {
            "orders": {k: orders.to_view(s) for k, s in self.order_to_state.items()},
            "stock": {k: inventory.to_view(k, s) for k, s in self.product_to_stock.items()},
            "analytics": analytics.summary(analytics.merge([partial]), analytics.merge_counts([counts])),
        }


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_rebuild_equals_the_live_stages_with_duplicates_and_timers(seed: int) -> None:
    rng = random.Random(seed)
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
        token = rng.choice(["tok_ok"] * 8 + ["tok_declined"] * 2 + ["tok_hang"])
        if n % 13 == 4:
            world.lost.add(order_id)  # one line never answered: the pending deadline rejects it
        world.send(ORDERS, order_id, {**placed(order_id, lines, token=token), "timestamp": world.now()})
        if n % 17 == 0:
            world.command(ORDERS, order_id, "order.cancel", {"order_id": order_id, "reason": "customer_cancelled"})
        if n % 7 == 3:
            # The deadline fires while answers are still on their way (on the topic, not yet handled).
            world.run(steps=rng.randint(1, 6))
            if world.order_to_state.get(order_id, {}).get("status") in ("pending", "reserved"):
                world.expire(order_id)
        world.run()
    for order_id in ids:
        if world.order_to_state[order_id]["status"] in ("pending", "reserved"):
            world.expire(order_id)
    world.run()
    for order_id in ids[::5]:
        world.command(ORDERS, order_id, "order.ship", {"order_id": order_id, "carrier": "ups", "tracking_number": "1"})
    world.run()
    for order_id in ids[::10]:
        world.command(ORDERS, order_id, "order.deliver", {"order_id": order_id})
    world.run()

    models = rb.rebuild(world.log, PAYMENT_TIMEOUT, PENDING_TIMEOUT)
    live = world.live()
    # The one thing the topics cannot tell: the instant of a timer command (never on a topic), which is an
    # order's updated_at when nothing touched it after. Its outcome's timestamp stands in: a little later
    # live (the engine's gap from timer tick to handling), one world tick here.
    timer_last = {oid for oid, at in world.timer_at.items() if live["orders"][oid]["updated_at"] == at}
    assert timer_last
    for oid in timer_last:
        assert models.orders[oid]["updated_at"] > live["orders"][oid]["updated_at"]
        models.orders[oid]["updated_at"] = live["orders"][oid]["updated_at"]
    # Nor which came first of a timer that ended an order and an answer sent before it but
    # handled after it (the world fires timers early; live only with a backlog past the
    # timeout): live, the answer's older instant is the order's last change; rebuilt, the end's.
    answered_late = {
        oid for oid, at in world.timer_at.items() if oid not in timer_last and live["orders"][oid]["updated_at"] < at
    }
    for oid in answered_late:
        if models.orders[oid]["updated_at"] != live["orders"][oid]["updated_at"]:
            assert models.orders[oid]["updated_at"] > world.timer_at[oid]
            models.orders[oid]["updated_at"] = live["orders"][oid]["updated_at"]
    assert rb.compare(models.as_dict(), live) == []
    assert models.as_dict()["orders"] == live["orders"]
    assert models.stock == live["stock"]
    assert models.analytics == live["analytics"]
    statuses = Counter(v["status"] for v in live["orders"].values())
    reasons = Counter(v.get("reason") for v in live["orders"].values())
    assert {"confirmed", "rejected", "cancelled", "shipped", "delivered"} <= set(statuses)
    assert {"reservation_timeout", "payment_timeout", "out_of_stock", "card_declined"} <= set(reasons)
    assert models.stats["duplicates"] > 0
    assert models.stats["timer_commands"] > 0
    assert "unreadable" not in models.stats
    assert len(live["analytics"]["revenue_per_minute"]) > 1


def test_importing_the_fold_builds_no_app() -> None:
    import subprocess
    import sys

    code = "import sys, app.rebuild.fold; print('app.main' in sys.modules, 'faust.app' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_importing_the_package_registers_the_faust_subcommand() -> None:
    from faust.cli.base import cli

    import app.rebuild  # noqa: F401  # what app.__getattr__ imports to register it

    assert "rebuild" in cli.commands
    assert [p.name for p in cli.commands["rebuild"].params][:5] == [
        "compare_url",
        "output",
        "broker",
        "app_id",
        "progress",
    ]


def test_the_command_line_exits_2_when_the_broker_does_not_answer(capsys: pytest.CaptureFixture[str]) -> None:
    status = rb.main(["--broker", "kafka://127.0.0.1:1", "--app-id", "nothing-here", "--no-progress"])

    assert status == 2
    assert "error: cannot reach the broker at 127.0.0.1:1" in capsys.readouterr().err
