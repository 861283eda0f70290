"""The order saga's pure decisions: every transition of ``orders.decide``, no broker, no loop."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.domain import orders
from app.domain.common import ANALYTICS, INVENTORY, NOTIFICATIONS, ORDERS, PAYMENTS, Emit
from schemas.envelope import Envelope, make, parse_ts

ORDER_ID = "ord-1"
USER_ID = "u-1"
PAYMENT_ID = f"pay_{ORDER_ID}"
TIMEOUT = 30.0
#: Two lines: 2 x 12.50 + 1 x 4.99 = 29.99.
LINES = (("p1", 2, 1250), ("p2", 1, 499))
TOTAL_CENTS = 2999


def ts(second: int) -> str:
    """Return an event timestamp ``second`` seconds into the test's minute."""
    return f"2024-05-01T12:00:{second:02d}.000Z"


def placed(lines: tuple[tuple[str, int, int], ...] = LINES, *, payment: dict[str, Any] | None = None) -> Envelope:
    """Build a current-version ``order.placed``."""
    items = [{"product_id": pid, "quantity": qty, "price_cents": cents} for pid, qty, cents in lines]
    payload = {
        "order_id": ORDER_ID,
        "user_id": USER_ID,
        "user_email": "ada@example.com",
        "items": items,
        "total_cents": sum(qty * cents for _, qty, cents in lines),
        "currency": "USD",
        "payment": {"method": "card", "token": "tok_ok_abc", "last4": "4242"} if payment is None else payment,
    }
    return make("order.placed", "order", ORDER_ID, payload, correlation_id=ORDER_ID, timestamp=ts(0), version=2)


def event(type_: str, entity_type: str, entity_id: str, second: int = 1, **payload: Any) -> Envelope:
    """Build an input of the saga correlated to the test order."""
    body = {"order_id": ORDER_ID, **payload}
    return make(type_, entity_type, entity_id, body, correlation_id=ORDER_ID, timestamp=ts(second))


def reserved(pid: str, qty: int, second: int = 1) -> Envelope:
    return event("inventory.reserved", "product", pid, second, product_id=pid, quantity=qty)


def rejected(pid: str, requested: int, available: int, second: int = 1) -> Envelope:
    payload = {"product_id": pid, "quantity": requested, "requested": requested, "available": available}
    return event("inventory.rejected", "product", pid, second, **payload)


def processed(second: int = 3) -> Envelope:
    payload = {"payment_id": PAYMENT_ID, "charge_id": "ch_1", "amount_cents": TOTAL_CENTS, "currency": "USD"}
    return event("payment.processed", "payment", PAYMENT_ID, second, **payload)


def failed(reason: str | None, second: int = 3) -> Envelope:
    payload = {"payment_id": PAYMENT_ID, "amount_cents": TOTAL_CENTS, "currency": "USD", "reason": reason}
    return event("payment.failed", "payment", PAYMENT_ID, second, **payload)


def cancel(reason: str | None = None, second: int = 4) -> Envelope:
    payload = {} if reason is None else {"reason": reason}
    return event("order.cancel", "order", ORDER_ID, second, **payload)


def ship(second: int = 5) -> Envelope:
    return event("order.ship", "order", ORDER_ID, second, carrier="UPS", tracking_number="1Z999")


def deliver(second: int = 6) -> Envelope:
    return event("order.deliver", "order", ORDER_ID, second)


def run(*events: Envelope) -> orders.OrderState:
    """Apply ``events`` in order and return the final state."""
    state: orders.OrderState | None = None
    for env in events:
        decision = orders.decide(state, env, TIMEOUT)
        state = decision.state if decision.state is not None else state
    assert state is not None
    return state


def summary(emits: list[Emit]) -> list[tuple[str, str, str]]:
    """Reduce emits to (topic, key, type) for compact assertions."""
    return [(e.topic, e.key, e.type) for e in emits]


def releases(emits: list[Emit]) -> list[tuple[str, int]]:
    return [(e.payload["product_id"], e.payload["quantity"]) for e in emits if e.type == "inventory.release"]


HISTORIES: dict[str, tuple[Envelope, ...]] = {
    "pending": (placed(),),
    "reserved": (placed(), reserved("p1", 2), reserved("p2", 1, 2)),
    "confirmed": (placed(), reserved("p1", 2), reserved("p2", 1, 2), processed()),
    "shipped": (placed(), reserved("p1", 2), reserved("p2", 1, 2), processed(), ship()),
    "delivered": (placed(), reserved("p1", 2), reserved("p2", 1, 2), processed(), ship(), deliver()),
    "rejected": (placed(), reserved("p1", 2), rejected("p2", 1, 0, 2)),
    "cancelled": (placed(), cancel(second=1)),
}


def state_in(status: str) -> orders.OrderState:
    """Reach ``status`` through the real transitions (``paid`` is never reached, so it is forged)."""
    if status == "paid":
        return {**run(*HISTORIES["confirmed"]), "status": "paid"}
    state = run(*HISTORIES[status])
    assert state["status"] == status
    return state


# --- order.placed -----------------------------------------------------------------------------


def test_place_creates_a_pending_order_with_exact_total() -> None:
    state = orders.decide(None, placed(), TIMEOUT).state

    assert state is not None
    assert state["status"] == "pending"
    assert state["total_cents"] == TOTAL_CENTS
    assert state["currency"] == "USD"
    assert state["created_at"] == state["updated_at"] == ts(0)
    assert state["lines"] == {"p1": "pending", "p2": "pending"}
    assert state["payment"] == {"status": "pending", "last4": "4242", "payment_id": None, "token": "tok_ok_abc"}


def test_place_single_line_asks_its_product_partition_to_reserve() -> None:
    decision = orders.decide(None, placed((("p1", 3, 100),)), TIMEOUT)

    assert decision.emits == [
        Emit(
            INVENTORY,
            "p1",
            "inventory.reserve",
            "product",
            "p1",
            {"order_id": ORDER_ID, "product_id": "p1", "quantity": 3},
        )
    ]


def test_place_multi_line_reserves_every_line_keyed_by_its_product() -> None:
    decision = orders.decide(None, placed(), TIMEOUT)

    assert summary(decision.emits) == [
        (INVENTORY, "p1", "inventory.reserve"),
        (INVENTORY, "p2", "inventory.reserve"),
    ]
    assert [(e.payload["product_id"], e.payload["quantity"]) for e in decision.emits] == [("p1", 2), ("p2", 1)]


def test_place_defaults_currency_to_usd() -> None:
    env = placed()
    del env["payload"]["currency"]

    state = orders.decide(None, env, TIMEOUT).state

    assert state is not None
    assert state["currency"] == "USD"


def test_a_second_order_placed_for_the_same_order_is_ignored() -> None:
    decision = orders.decide(state_in("pending"), placed(), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param((), id="no-lines"),
        pytest.param((("p1", 0, 100),), id="zero-quantity"),
        pytest.param((("p1", 1, -1),), id="negative-price"),
        pytest.param((("p1", 1, 100), ("p1", 2, 100)), id="product-twice"),
    ],
)
def test_place_refuses_a_malformed_order(lines: tuple[tuple[str, int, int], ...]) -> None:
    with pytest.raises(ValueError):
        orders.decide(None, placed(lines), TIMEOUT)


@pytest.mark.parametrize(
    "env",
    [reserved("p1", 2), processed(), failed("card_declined"), cancel(), ship(), deliver()],
    ids=lambda e: e["type"],
)
def test_inputs_for_an_order_never_placed_are_ignored(env: Envelope) -> None:
    decision = orders.decide(None, env, TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


# --- inventory.reserved / inventory.rejected ---------------------------------------------------


def test_one_reserved_line_of_two_keeps_waiting() -> None:
    decision = orders.decide(state_in("pending"), reserved("p1", 2), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "pending"
    assert decision.state["lines"] == {"p1": "reserved", "p2": "pending"}
    assert decision.emits == []


def test_all_lines_reserved_moves_to_reserved_and_requests_the_charge() -> None:
    state = run(placed(), reserved("p1", 2))

    decision = orders.decide(state, reserved("p2", 1, second=2), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "reserved"
    assert decision.state["deadline"] == parse_ts(ts(2)).timestamp() + TIMEOUT
    assert decision.state["payment"]["status"] == "charging"
    assert decision.state["payment"]["payment_id"] == PAYMENT_ID
    assert decision.emits == [
        Emit(
            PAYMENTS,
            ORDER_ID,
            "payment.charge",
            "payment",
            PAYMENT_ID,
            {
                "order_id": ORDER_ID,
                "payment_id": PAYMENT_ID,
                "token": "tok_ok_abc",
                "last4": "4242",
                "amount_cents": TOTAL_CENTS,
                "currency": "USD",
            },
        )
    ]


def test_a_duplicate_line_answer_is_ignored() -> None:
    state = run(placed(), reserved("p1", 2))

    decision = orders.decide(state, reserved("p1", 2), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


def test_one_short_line_rejects_the_order_and_releases_the_reserved_lines() -> None:
    state = run(placed(), reserved("p1", 2))

    decision = orders.decide(state, rejected("p2", 1, 0, second=2), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "rejected"
    assert decision.state["reason"] == "out_of_stock"
    assert decision.state["payment"]["status"] == "not_charged"
    assert summary(decision.emits) == [(INVENTORY, "p1", "inventory.release"), (ORDERS, ORDER_ID, "order.rejected")]
    assert releases(decision.emits) == [("p1", 2)]


def test_rejection_details_name_the_short_product() -> None:
    state = run(placed(), reserved("p1", 2), rejected("p2", 1, 0, second=2))

    expected = [{"product_id": "p2", "requested": 1, "available": 0}]
    assert state["details"] == expected
    rejected_event = orders.decide(run(placed(), reserved("p1", 2)), rejected("p2", 1, 0), TIMEOUT).emits[-1]
    assert rejected_event.payload == {"order_id": ORDER_ID, "reason": "out_of_stock", "details": expected}


def test_a_short_line_answered_first_waits_for_the_others_then_rejects() -> None:
    state = run(placed(), rejected("p2", 1, 0))
    assert state["status"] == "pending"

    decision = orders.decide(state, reserved("p1", 2, second=2), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "rejected"
    assert releases(decision.emits) == [("p1", 2)]


def test_every_line_short_rejects_without_releasing_anything() -> None:
    state = run(placed(), rejected("p1", 2, 1))

    decision = orders.decide(state, rejected("p2", 1, 0, second=2), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "rejected"
    assert [d["product_id"] for d in decision.state["details"]] == ["p1", "p2"]
    assert summary(decision.emits) == [(ORDERS, ORDER_ID, "order.rejected")]


def test_a_line_reserved_after_cancel_is_released_at_once() -> None:
    state = run(placed(), cancel(second=1))

    decision = orders.decide(state, reserved("p1", 2, second=2), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["lines"]["p1"] == "releasing"
    assert summary(decision.emits) == [(INVENTORY, "p1", "inventory.release")]
    assert releases(decision.emits) == [("p1", 2)]


def test_a_line_rejected_after_cancel_is_only_recorded() -> None:
    state = run(placed(), cancel(second=1))

    decision = orders.decide(state, rejected("p1", 2, 0, second=2), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["lines"]["p1"] == "rejected"
    assert decision.emits == []


# --- payment.processed / payment.failed --------------------------------------------------------


def test_payment_processed_confirms_the_order() -> None:
    decision = orders.decide(state_in("reserved"), processed(), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "confirmed"
    assert decision.state["deadline"] is None
    assert decision.state["updated_at"] == ts(3)
    assert decision.state["payment"]["status"] == "charged"
    assert decision.state["payment"]["charge_id"] == "ch_1"


def test_payment_processed_emits_confirmation_commits_notification_and_analytics() -> None:
    decision = orders.decide(state_in("reserved"), processed(), TIMEOUT)

    assert summary(decision.emits) == [
        (ORDERS, ORDER_ID, "order.confirmed"),
        (INVENTORY, "p1", "inventory.commit"),
        (INVENTORY, "p2", "inventory.commit"),
        (NOTIFICATIONS, USER_ID, "notification.send"),
        (ANALYTICS, ORDER_ID, "analytics.record"),
    ]
    confirmed, commit_p1, commit_p2, notification, analytics = decision.emits
    assert confirmed.payload == {"order_id": ORDER_ID, "total": "29.99", "currency": "USD"}
    assert commit_p1.payload == {"order_id": ORDER_ID, "product_id": "p1", "quantity": 2}
    assert commit_p2.payload == {"order_id": ORDER_ID, "product_id": "p2", "quantity": 1}
    assert notification.payload == {
        "order_id": ORDER_ID,
        "user_id": USER_ID,
        "email": "ada@example.com",
        "total": "29.99",
        "currency": "USD",
        "kind": "order_confirmed",
    }
    assert analytics.payload["total_cents"] == TOTAL_CENTS
    assert analytics.payload["confirmed_at"] == ts(3)
    assert [(i["product_id"], i["quantity"], i["price_cents"]) for i in analytics.payload["items"]] == list(LINES)


@pytest.mark.parametrize("reason", ["card_declined", "insufficient_funds", "gateway_timeout"])
def test_payment_failed_cancels_and_releases_every_line(reason: str) -> None:
    decision = orders.decide(state_in("reserved"), failed(reason), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["reason"] == reason
    assert decision.state["deadline"] is None
    assert decision.state["payment"]["status"] == "failed"
    assert releases(decision.emits) == [("p1", 2), ("p2", 1)]
    assert decision.emits[-1] == Emit(
        ORDERS, ORDER_ID, "order.cancelled", "order", ORDER_ID, {"order_id": ORDER_ID, "reason": reason}
    )


def test_payment_failed_without_a_reason_says_payment_failed() -> None:
    decision = orders.decide(state_in("reserved"), failed(None), TIMEOUT)

    assert decision.state is not None
    assert decision.state["reason"] == "payment_failed"


def test_payment_processed_after_cancel_is_refunded() -> None:
    state = run(*HISTORIES["reserved"], cancel(second=3))

    decision = orders.decide(state, processed(second=4), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["payment"]["status"] == "refunded"
    assert summary(decision.emits) == [(PAYMENTS, ORDER_ID, "payment.refund")]
    refund = decision.emits[0]
    assert refund.entity_id == PAYMENT_ID
    assert refund.payload["charge_id"] == "ch_1"
    assert refund.payload["reason"] == "order_cancelled"


def test_a_repeated_payment_processed_after_cancel_is_refunded_once() -> None:
    state = run(*HISTORIES["reserved"], cancel(second=3), processed(second=4))

    decision = orders.decide(state, processed(second=5), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


def test_a_repeated_payment_processed_after_confirm_is_ignored() -> None:
    decision = orders.decide(state_in("confirmed"), processed(second=4), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


def test_payment_failed_after_cancel_is_ignored() -> None:
    state = run(*HISTORIES["reserved"], cancel(second=3))

    decision = orders.decide(state, failed("card_declined", second=4), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


# --- order.cancel ------------------------------------------------------------------------------


def test_cancel_while_pending_cancels_without_releases() -> None:
    decision = orders.decide(state_in("pending"), cancel(), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["reason"] == "customer_cancelled"
    assert decision.state["payment"]["status"] == "cancelled"
    assert summary(decision.emits) == [(ORDERS, ORDER_ID, "order.cancelled")]


def test_cancel_while_partly_reserved_releases_the_reserved_line() -> None:
    state = run(placed(), reserved("p1", 2))

    decision = orders.decide(state, cancel(), TIMEOUT)

    assert releases(decision.emits) == [("p1", 2)]
    assert summary(decision.emits)[-1] == (ORDERS, ORDER_ID, "order.cancelled")


def test_cancel_while_reserved_releases_every_line() -> None:
    decision = orders.decide(state_in("reserved"), cancel(), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["deadline"] is None
    assert decision.state["payment"]["status"] == "cancelled"
    assert releases(decision.emits) == [("p1", 2), ("p2", 1)]
    assert decision.emits[-1].payload == {"order_id": ORDER_ID, "reason": "customer_cancelled"}


def test_cancel_keeps_a_given_reason() -> None:
    decision = orders.decide(state_in("pending"), cancel("changed_my_mind"), TIMEOUT)

    assert decision.state is not None
    assert decision.state["reason"] == "changed_my_mind"


@pytest.mark.parametrize("status", ["paid", "confirmed", "shipped", "delivered", "rejected", "cancelled"])
def test_cancel_is_refused_once_past_reserved(status: str) -> None:
    state = state_in(status)

    decision = orders.decide(state, cancel(second=9), TIMEOUT)

    assert not orders.can_cancel(state)
    assert decision.state is None
    assert decision.emits == []


@pytest.mark.parametrize("status", ["pending", "reserved"])
def test_can_cancel_while_pending_or_reserved(status: str) -> None:
    assert orders.can_cancel(state_in(status))


def test_payment_timeout_cancels_a_reserved_order_and_releases() -> None:
    decision = orders.decide(state_in("reserved"), cancel("payment_timeout"), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["reason"] == "payment_timeout"
    assert releases(decision.emits) == [("p1", 2), ("p2", 1)]
    assert decision.emits[-1].payload == {"order_id": ORDER_ID, "reason": "payment_timeout"}


@pytest.mark.parametrize("status", ["pending", "confirmed", "shipped", "delivered", "rejected", "cancelled"])
def test_payment_timeout_is_ignored_unless_reserved(status: str) -> None:
    decision = orders.decide(state_in(status), cancel("payment_timeout", second=9), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


# --- order.ship / order.deliver ----------------------------------------------------------------


def test_ship_a_confirmed_order() -> None:
    decision = orders.decide(state_in("confirmed"), ship(), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "shipped"
    assert decision.state["shipment"] == {"carrier": "UPS", "tracking_number": "1Z999"}
    assert decision.emits == [
        Emit(
            ORDERS,
            ORDER_ID,
            "order.shipped",
            "order",
            ORDER_ID,
            {"order_id": ORDER_ID, "carrier": "UPS", "tracking_number": "1Z999"},
        )
    ]


@pytest.mark.parametrize("status", ["pending", "reserved", "shipped", "delivered", "rejected", "cancelled"])
def test_ship_is_refused_unless_confirmed(status: str) -> None:
    state = state_in(status)

    decision = orders.decide(state, ship(second=9), TIMEOUT)

    assert not orders.can_ship(state)
    assert decision.state is None
    assert decision.emits == []


def test_deliver_a_shipped_order() -> None:
    decision = orders.decide(state_in("shipped"), deliver(), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "delivered"
    assert decision.state["updated_at"] == ts(6)
    assert summary(decision.emits) == [(ORDERS, ORDER_ID, "order.delivered")]


@pytest.mark.parametrize("status", ["pending", "reserved", "confirmed", "delivered", "rejected", "cancelled"])
def test_deliver_is_refused_unless_shipped(status: str) -> None:
    state = state_in(status)

    decision = orders.decide(state, deliver(second=9), TIMEOUT)

    assert not orders.can_deliver(state)
    assert decision.state is None
    assert decision.emits == []


# --- history-only events, fold, purity ---------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "line_state"), [("inventory.committed", "committed"), ("inventory.released", "released")]
)
def test_settled_lines_are_noted_without_emits(type_: str, line_state: str) -> None:
    env = event(type_, "product", "p1", 7, product_id="p1", quantity=2)

    decision = orders.decide(state_in("confirmed"), env, TIMEOUT)

    assert decision.state is not None
    assert decision.state["lines"]["p1"] == line_state
    assert decision.state["status"] == "confirmed"
    assert decision.emits == []


def test_events_of_other_stages_are_history_only() -> None:
    env = event("notification.sent", "notification", ORDER_ID, 7)

    decision = orders.decide(state_in("confirmed"), env, TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


@pytest.mark.parametrize(
    "history",
    [
        pytest.param(HISTORIES["delivered"], id="delivered"),
        pytest.param(HISTORIES["rejected"], id="rejected"),
        pytest.param((*HISTORIES["reserved"], failed("insufficient_funds")), id="payment-failed"),
        pytest.param((*HISTORIES["reserved"], cancel(second=3), processed(second=4)), id="refunded"),
        pytest.param(
            (
                placed(),
                cancel(second=1),
                reserved("p1", 2, 2),
                event("inventory.released", "product", "p1", 3, product_id="p1"),
            ),
            id="cancelled-in-flight",
        ),
    ],
)
def test_fold_equals_applying_decide_in_order(history: tuple[Envelope, ...]) -> None:
    state: orders.OrderState | None = None
    for env in history:
        decision = orders.decide(state, env, TIMEOUT)
        state = decision.state if decision.state is not None else state

    assert orders.fold(list(history), TIMEOUT) == state


def test_fold_of_no_events_is_nothing() -> None:
    assert orders.fold([], TIMEOUT) is None


def test_decide_never_mutates_the_state_it_is_given() -> None:
    three_lines = (("p1", 1, 100), ("p2", 1, 200), ("p3", 1, 300))
    history = [
        placed(three_lines),
        reserved("p1", 1, 1),
        rejected("p2", 1, 0, 2),
        rejected("p3", 1, 0, 3),
        event("inventory.released", "product", "p1", 4, product_id="p1"),
    ]
    state: orders.OrderState | None = None
    for env in history:
        before = copy.deepcopy(state)
        decision = orders.decide(state, env, TIMEOUT)
        assert state == before, f"{env['type']} changed its input state"
        state = decision.state if decision.state is not None else state


# --- read model --------------------------------------------------------------------------------


def test_view_formats_money_as_decimal_strings() -> None:
    view = orders.to_view(run(placed((("p1", 2, 1250), ("p2", 3, 5), ("p3", 1, 100)))))

    assert view["items"] == [
        {"product_id": "p1", "quantity": 2, "price": "12.50"},
        {"product_id": "p2", "quantity": 3, "price": "0.05"},
        {"product_id": "p3", "quantity": 1, "price": "1.00"},
    ]
    assert view["total"] == "26.15"
    assert view["currency"] == "USD"


def test_view_of_a_pending_order_omits_reason() -> None:
    view = orders.to_view(state_in("pending"))

    assert view["status"] == "pending"
    assert "reason" not in view
    assert "details" not in view
    assert "shipment" not in view
    assert view["payment"] == {"status": "pending", "last4": "4242", "payment_id": None}


def test_view_omits_payment_when_nothing_is_known_of_it() -> None:
    view = orders.to_view(run(placed(payment={})))

    assert "payment" not in view


def test_view_of_a_rejected_order_gives_reason_and_details() -> None:
    view = orders.to_view(state_in("rejected"))

    assert view["reason"] == "out_of_stock"
    assert view["details"] == [{"product_id": "p2", "requested": 1, "available": 0}]


def test_view_of_a_confirmed_order_shows_the_payment_but_never_the_token() -> None:
    view = orders.to_view(state_in("confirmed"))

    assert view["payment"] == {"status": "charged", "last4": "4242", "payment_id": PAYMENT_ID}
    assert "tok_ok_abc" not in repr(view)


def test_view_has_the_api_fields() -> None:
    view = orders.to_view(state_in("shipped"))

    assert set(view) == {
        "order_id",
        "user_id",
        "status",
        "items",
        "total",
        "currency",
        "created_at",
        "updated_at",
        "payment",
        "shipment",
    }
    assert (view["created_at"], view["updated_at"]) == (ts(0), ts(5))


@pytest.mark.parametrize(
    ("status", "final"),
    [
        ("pending", False),
        ("reserved", False),
        ("confirmed", True),
        ("shipped", True),
        ("delivered", True),
        ("rejected", True),
        ("cancelled", True),
    ],
)
def test_is_final(status: str, final: bool) -> None:
    assert orders.is_final(state_in(status)) is final
