"""The order saga's pure decisions: every transition of ``orders.decide``, no broker, no loop."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.domain import orders
from app.domain.common import INVENTORY, ORDERS, PAYMENTS, Emit
from schemas.envelope import Envelope, derived_id, make, parse_ts

ORDER_ID = "ord-1"
USER_ID = "u-1"
PAYMENT_ID = f"pay_{ORDER_ID}"
TIMEOUT = 30.0
#: The pending deadline given to ``decide`` where a test needs one apart from the payment timeout.
PENDING_TIMEOUT = 20.0
#: Two lines: 2 x 12.50 + 1 x 4.99 = 29.99.
LINES = (("p1", 2, 1250), ("p2", 1, 499))
TOTAL_CENTS = 2999


def ts(second: int) -> str:
    """Return an event timestamp ``second`` seconds into the test's minute."""
    return f"2024-05-01T12:00:{second:02d}.000Z"


def placed(
    lines: tuple[tuple[str, int, int], ...] = LINES,
    *,
    payment: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Envelope:
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
    return make(
        "order.placed",
        "order",
        ORDER_ID,
        payload,
        correlation_id=ORDER_ID,
        timestamp=ts(0),
        version=2,
        metadata=metadata,
    )


def event(type_: str, entity_type: str, entity_id: str, second: int = 1, **payload: Any) -> Envelope:
    """Build an input of the saga correlated to the test order."""
    body = {"order_id": ORDER_ID, **payload}
    return make(type_, entity_type, entity_id, body, correlation_id=ORDER_ID, timestamp=ts(second))


def reserved(pid: str, qty: int, second: int = 1) -> Envelope:
    return event("inventory.reserved", "product", pid, second, product_id=pid, quantity=qty)


def rejected(pid: str, requested: int, available: int, second: int = 1) -> Envelope:
    payload = {"product_id": pid, "quantity": requested, "requested": requested, "available": available}
    return event("inventory.rejected", "product", pid, second, **payload)


def committed(pid: str, qty: int, second: int = 4) -> Envelope:
    return event("inventory.committed", "product", pid, second, product_id=pid, quantity=qty)


def released(pid: str, qty: int, second: int = 4) -> Envelope:
    return event("inventory.released", "product", pid, second, product_id=pid, quantity=qty)


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


_RESERVED = (placed(), reserved("p1", 2), reserved("p2", 1, 2))
_PAID = (*_RESERVED, processed())
_CONFIRMED = (*_PAID, committed("p1", 2), committed("p2", 1))
HISTORIES: dict[str, tuple[Envelope, ...]] = {
    "pending": (placed(),),
    "reserved": _RESERVED,
    "paid": _PAID,
    "confirmed": _CONFIRMED,
    "shipped": (*_CONFIRMED, ship()),
    "delivered": (*_CONFIRMED, ship(), deliver()),
    "rejected": (placed(), reserved("p1", 2), rejected("p2", 1, 0, 2), released("p1", 2, 3)),
    "cancelled": (placed(), cancel(second=1), rejected("p1", 2, 0, 2), rejected("p2", 1, 0, 2)),
}


def state_in(status: str) -> orders.OrderState:
    """Reach ``status`` through the real transitions."""
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
    "lines",
    [
        # The edge's bounds, for an order.placed written on the topic by hand (probe 21: a price
        # of 2**64 - 1 was confirmed, and its analytics record then dead-lettered).
        pytest.param((("p1", 1, 2**64 - 1),), id="price-past-64-bits"),
        pytest.param((("p1", 1, 100_000_001),), id="price-past-the-bound"),
        pytest.param((("p1", 10_001, 100),), id="quantity-past-the-bound"),
        pytest.param(tuple((f"p{n}", 1, 100) for n in range(101)), id="101-lines"),
        pytest.param(tuple((f"p{n}", 10_000, 100_000_000) for n in range(2)), id="total-past-the-bound"),
    ],
)
def test_an_order_placed_past_the_edge_s_bounds_is_refused_live(lines: tuple[tuple[str, int, int], ...]) -> None:
    with pytest.raises(ValueError, match=r"bounds|totals"):
        orders.admit(placed(lines))


@pytest.mark.parametrize("currency", ["<script>", "XXX", "usd", "", 840])
def test_an_order_placed_in_no_currency_in_circulation_is_refused_live(currency: object) -> None:
    env = placed()
    env = {**env, "payload": {**env["payload"], "currency": currency}}
    with pytest.raises(ValueError, match="currency"):
        orders.admit(env)


def test_an_order_at_its_bounds_is_taken() -> None:
    lines = (("p0", 1_000, 100_000_000), *((f"p{n}", 10_000, 0) for n in range(1, 100)))  # 1,000,000,000.00
    orders.admit(placed(lines))
    assert orders.decide(None, placed(lines), TIMEOUT).state is not None


def test_a_stored_history_folds_whatever_the_live_rules_now_refuse() -> None:
    """``as_of`` and the rebuild fold stored histories with ``decide`` alone: an order placed in a
    currency ISO 4217 has since withdrawn (HRK), or a payment answer stamped before the entry
    that asked for it (two workers' clocks), still reads back (review: a 500, a dropped order)."""
    env = placed()
    withdrawn = {**env, "payload": {**env["payload"], "currency": "HRK"}}
    assert orders.fold([withdrawn], TIMEOUT) is not None
    with pytest.raises(ValueError):
        orders.admit(withdrawn)
    early = orders.fold([placed(), processed()], TIMEOUT)
    assert early is not None and early["status"] == "pending"


@pytest.mark.parametrize(
    "env",
    [reserved("p1", 2), processed(), failed("card_declined"), cancel(), ship(), deliver()],
    ids=lambda e: e["type"],
)
def test_inputs_for_an_order_never_placed_are_ignored(env: Envelope) -> None:
    decision = orders.decide(None, env, TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


def test_a_payment_answer_the_order_did_not_ask_for_is_told_apart() -> None:
    """A payment.processed read before the order asked for a charge made the saga refund
    whatever charge it named (probe 21): the saga leaves such an answer alone."""
    assert not orders.asked_for(run(placed()), processed())
    other = processed()
    other = {**other, "payload": {**other["payload"], "payment_id": "pay_someone_else"}}
    assert not orders.asked_for(run(*HISTORIES["reserved"]), other)
    assert orders.asked_for(run(*HISTORIES["reserved"]), processed())


@pytest.mark.parametrize("change", [{"amount_cents": 1}, {"currency": "EUR"}])
def test_a_payment_answer_for_another_amount_than_the_order_asked_for_is_told_apart(change: dict[str, Any]) -> None:
    """Probe 23: a payment.charge of one cent written on the topic before the saga's (the payment
    id is the order's) was charged, answered, and confirmed the order paid with a cent."""
    for answer in (processed(), failed("card_declined")):
        forged = {**answer, "payload": {**answer["payload"], **change}}
        assert not orders.asked_for(run(*HISTORIES["reserved"]), forged)


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


def test_one_short_line_releases_the_reserved_lines_then_rejects_once_they_are_back() -> None:
    state = run(placed(), reserved("p1", 2))
    short = rejected("p2", 1, 0, second=2)

    decision = orders.decide(state, short, TIMEOUT)

    # SPEC: "any line short ─► release the lines already reserved ─► order.rejected".
    assert decision.state is not None
    assert decision.state["status"] == "pending"
    assert orders.closing(decision.state) == {
        "status": "rejected",
        "reason": "out_of_stock",
        "details": [{"product_id": "p2", "requested": 1, "available": 0}],
        "cause": short["id"],
    }
    assert not orders.is_final(decision.state)
    assert decision.state["payment"]["status"] == "not_charged"
    assert summary(decision.emits) == [(INVENTORY, "p1", "inventory.release")]
    assert releases(decision.emits) == [("p1", 2)]

    ended = orders.decide(decision.state, released("p1", 2, second=3), TIMEOUT)

    assert ended.state is not None
    assert ended.state["status"] == "rejected"
    assert ended.state["reason"] == "out_of_stock"
    assert ended.state["updated_at"] == ts(3)
    assert ended.state["deadline"] is None
    assert orders.closing(ended.state) is None
    assert summary(ended.emits) == [(ORDERS, ORDER_ID, "order.rejected")]
    assert ended.emits[0].cause == short["id"]  # the end was decided by the short line


def test_rejection_details_name_the_short_product() -> None:
    state = state_in("rejected")

    expected = [{"product_id": "p2", "requested": 1, "available": 0}]
    assert state["details"] == expected
    ending = run(placed(), reserved("p1", 2), rejected("p2", 1, 0))
    rejected_event = orders.decide(ending, released("p1", 2), TIMEOUT).emits[-1]
    assert rejected_event.payload == {"order_id": ORDER_ID, "reason": "out_of_stock", "details": expected}


def test_a_short_line_answered_first_waits_for_the_others_then_rejects() -> None:
    state = run(placed(), rejected("p2", 1, 0))
    assert state["status"] == "pending"

    decision = orders.decide(state, reserved("p1", 2, second=2), TIMEOUT)

    assert decision.state is not None
    assert orders.closing(decision.state)["status"] == "rejected"  # type: ignore[index]
    assert releases(decision.emits) == [("p1", 2)]
    assert run(*HISTORIES["pending"], rejected("p2", 1, 0), reserved("p1", 2, 2), released("p1", 2, 3))["status"] == (
        "rejected"
    )


def test_every_line_short_rejects_without_releasing_anything() -> None:
    state = run(placed(), rejected("p1", 2, 1))

    decision = orders.decide(state, rejected("p2", 1, 0, second=2), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "rejected"
    assert [d["product_id"] for d in decision.state["details"]] == ["p1", "p2"]
    assert summary(decision.emits) == [(ORDERS, ORDER_ID, "order.rejected")]


def test_a_cancel_before_the_lines_answered_waits_for_their_answers_and_gives_them_back() -> None:
    # It read cancelled before a reservation still in flight was released (probe 16): the stock
    # came back 80-420 ms after the 202, and an order placed at once for it was rejected.
    cancelling = orders.decide(run(placed()), cancel(second=1), TIMEOUT)
    assert cancelling.state is not None and cancelling.emits == []
    assert cancelling.state["status"] == "pending"
    assert orders.closing(cancelling.state) is not None and orders.closing(cancelling.state)["status"] == "cancelled"
    assert cancelling.state["deadline"] is not None  # the release timeout bounds the wait

    decision = orders.decide(cancelling.state, reserved("p1", 2, second=2), TIMEOUT)
    assert decision.state is not None
    assert decision.state["status"] == "pending"
    assert decision.state["lines"]["p1"] == "releasing"
    assert summary(decision.emits) == [(INVENTORY, "p1", "inventory.release")]
    assert releases(decision.emits) == [("p1", 2)]

    decision = orders.decide(decision.state, rejected("p2", 1, 0, second=3), TIMEOUT)
    assert decision.state is not None and decision.state["status"] == "pending" and decision.emits == []

    decision = orders.decide(decision.state, released("p1", 2, second=4), TIMEOUT)
    assert decision.state is not None and decision.state["status"] == "cancelled"
    assert summary(decision.emits) == [(ORDERS, ORDER_ID, "order.cancelled")]


def test_a_cancel_before_the_lines_answered_ends_at_the_last_answer_when_none_was_reserved() -> None:
    state = run(placed(), cancel(second=1), rejected("p1", 2, 0, second=2))
    assert state["status"] == "pending"

    decision = orders.decide(state, rejected("p2", 1, 0, second=3), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["lines"] == {"p1": "rejected", "p2": "rejected"}
    assert summary(decision.emits) == [(ORDERS, ORDER_ID, "order.cancelled")]


# --- payment.processed / payment.failed --------------------------------------------------------


def test_payment_processed_marks_the_order_paid() -> None:
    decision = orders.decide(state_in("reserved"), processed(), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "paid"
    assert decision.state["deadline"] is None
    assert decision.state["updated_at"] == ts(3)
    assert decision.state["payment"]["status"] == "charged"
    assert decision.state["payment"]["payment_id"] == PAYMENT_ID
    assert decision.state["payment"]["charge_id"] == "ch_1"
    assert decision.state["lines"] == {"p1": "committing", "p2": "committing"}


def test_payment_processed_records_order_paid_and_commits_every_line() -> None:
    decision = orders.decide(state_in("reserved"), processed(), TIMEOUT)

    assert summary(decision.emits) == [
        (ORDERS, ORDER_ID, "order.paid"),
        (INVENTORY, "p1", "inventory.commit"),
        (INVENTORY, "p2", "inventory.commit"),
    ]
    paid, commit_p1, commit_p2 = decision.emits
    assert paid == Emit(
        ORDERS,
        ORDER_ID,
        "order.paid",
        "order",
        ORDER_ID,
        {"order_id": ORDER_ID, "payment_id": PAYMENT_ID, "amount": "29.99", "currency": "USD"},
    )
    assert (commit_p1.entity_type, commit_p1.entity_id) == ("product", "p1")
    assert commit_p1.payload == {"order_id": ORDER_ID, "product_id": "p1", "quantity": 2}
    assert commit_p2.payload == {"order_id": ORDER_ID, "product_id": "p2", "quantity": 1}


def test_paid_is_not_final_and_cannot_be_cancelled_shipped_or_delivered() -> None:
    state = state_in("paid")

    assert not orders.is_final(state)
    assert not orders.can_cancel(state)
    assert not orders.can_ship(state)
    assert not orders.can_deliver(state)


def test_a_commit_of_one_line_of_two_keeps_the_order_paid() -> None:
    decision = orders.decide(state_in("paid"), committed("p1", 2), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "paid"
    assert decision.state["lines"] == {"p1": "committed", "p2": "committing"}
    assert decision.state["updated_at"] == ts(3)
    assert decision.emits == []


def test_the_last_commit_confirms_the_order_with_everything_downstream_needs() -> None:
    state = run(*HISTORIES["paid"], committed("p1", 2, second=4))

    decision = orders.decide(state, committed("p2", 1, second=5), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "confirmed"
    assert decision.state["updated_at"] == ts(5)
    assert decision.state["lines"] == {"p1": "committed", "p2": "committed"}
    assert decision.emits == [
        Emit(
            ORDERS,
            ORDER_ID,
            "order.confirmed",
            "order",
            ORDER_ID,
            {
                "order_id": ORDER_ID,
                "user_id": USER_ID,
                "user_email": "ada@example.com",
                "total": "29.99",
                "total_cents": TOTAL_CENTS,
                "currency": "USD",
                "items": [
                    {"product_id": "p1", "quantity": 2, "price_cents": 1250},
                    {"product_id": "p2", "quantity": 1, "price_cents": 499},
                ],
                "confirmed_at": ts(5),
            },
        )
    ]


def test_commits_in_any_order_confirm_once() -> None:
    state = run(*HISTORIES["paid"], committed("p2", 1, second=4))

    decision = orders.decide(state, committed("p1", 2, second=5), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "confirmed"
    assert summary(decision.emits) == [(ORDERS, ORDER_ID, "order.confirmed")]


@pytest.mark.parametrize("status", ["confirmed", "shipped", "delivered"])
def test_a_repeated_commit_never_confirms_twice(status: str) -> None:
    decision = orders.decide(state_in(status), committed("p2", 1, second=9), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


def test_a_single_line_order_is_confirmed_by_its_one_commit() -> None:
    one = (("p1", 3, 100),)
    state = run(placed(one), reserved("p1", 3), processed())
    assert state["status"] == "paid"

    decision = orders.decide(state, committed("p1", 3, second=4), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "confirmed"
    assert [e.payload["total"] for e in decision.emits] == ["3.00"]


@pytest.mark.parametrize("reason", ["card_declined", "insufficient_funds", "gateway_timeout"])
def test_payment_failed_releases_every_line_then_cancels(reason: str) -> None:
    failure = failed(reason)
    decision = orders.decide(state_in("reserved"), failure, TIMEOUT, PENDING_TIMEOUT)

    # SPEC: "payment.failed ─► [inventory] inventory.released ─► order.cancelled".
    assert decision.state is not None
    assert decision.state["status"] == "reserved"
    assert orders.closing(decision.state) == {
        "status": "cancelled",
        "reason": reason,
        "details": None,
        "cause": failure["id"],
    }
    assert decision.state["deadline"] == parse_ts(ts(3)).timestamp() + PENDING_TIMEOUT  # the wait is bounded
    assert decision.state["payment"]["status"] == "failed"
    assert summary(decision.emits) == [(INVENTORY, "p1", "inventory.release"), (INVENTORY, "p2", "inventory.release")]
    assert releases(decision.emits) == [("p1", 2), ("p2", 1)]

    one = orders.decide(decision.state, released("p2", 1, second=4), TIMEOUT)
    assert one.state is not None and one.state["status"] == "reserved" and one.emits == []
    ended = orders.decide(one.state, released("p1", 2, second=5), TIMEOUT)

    assert ended.state is not None
    assert ended.state["status"] == "cancelled"
    assert ended.state["reason"] == reason
    assert ended.state["deadline"] is None
    assert ended.emits == [
        Emit(
            ORDERS,
            ORDER_ID,
            "order.cancelled",
            "order",
            ORDER_ID,
            {"order_id": ORDER_ID, "reason": reason},
            cause=failure["id"],
        )
    ]


def test_payment_failed_without_a_reason_says_payment_failed() -> None:
    state = run(*HISTORIES["reserved"], failed(None), released("p1", 2), released("p2", 1))

    assert state["status"] == "cancelled"
    assert state["reason"] == "payment_failed"


def test_payment_processed_after_cancel_is_refunded() -> None:
    state = run(*HISTORIES["reserved"], cancel(second=3))

    decision = orders.decide(state, processed(second=4), TIMEOUT)

    assert decision.state is not None
    assert orders.closing(decision.state)["status"] == "cancelled"  # type: ignore[index]
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


@pytest.mark.parametrize("status", ["paid", "confirmed", "shipped", "delivered"])
def test_a_repeated_payment_processed_after_paid_is_ignored(status: str) -> None:
    decision = orders.decide(state_in(status), processed(second=9), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


def test_payment_failed_after_cancel_changes_nothing_but_is_kept_in_the_history() -> None:
    state = run(*HISTORIES["reserved"], cancel(second=3))

    decision = orders.decide(state, failed("card_declined", second=4), TIMEOUT)

    assert decision.state is not None and decision.emits == []  # an entry: the event, in the history
    assert orders.to_view(decision.state) == orders.to_view(state)


# --- order.cancel ------------------------------------------------------------------------------


def test_cancel_while_pending_cancels_once_the_lines_answered_without_releases() -> None:
    decision = orders.decide(state_in("pending"), cancel(), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "pending" and decision.emits == []  # waiting for the lines' answers
    assert decision.state["payment"]["status"] == "cancelled"
    state = run(*HISTORIES["pending"], cancel(), rejected("p1", 2, 0, 5))
    decision = orders.decide(state, rejected("p2", 1, 0, 6), TIMEOUT)
    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["reason"] == "customer_cancelled"
    assert summary(decision.emits) == [(ORDERS, ORDER_ID, "order.cancelled")]


def test_cancel_while_partly_reserved_releases_the_reserved_line() -> None:
    state = run(placed(), reserved("p1", 2))

    decision = orders.decide(state, cancel(), TIMEOUT)

    assert releases(decision.emits) == [("p1", 2)]
    assert summary(decision.emits) == [(INVENTORY, "p1", "inventory.release")]  # cancelled once it is back
    assert decision.state is not None and decision.state["lines"] == {"p1": "releasing", "p2": "pending"}


def test_cancel_while_reserved_releases_every_line_then_cancels() -> None:
    command = cancel()
    decision = orders.decide(state_in("reserved"), command, TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "reserved"
    assert decision.state["payment"]["status"] == "cancelled"
    assert releases(decision.emits) == [("p1", 2), ("p2", 1)]
    assert len(decision.emits) == 2
    assert orders.can_cancel(decision.state)  # a second cancel is accepted, and changes nothing
    assert orders.decide(decision.state, cancel(second=5), TIMEOUT).state is None

    state = run(*HISTORIES["reserved"], command, released("p1", 2, 5))
    ended = orders.decide(state, released("p2", 1, 6), TIMEOUT)

    assert ended.state is not None
    assert ended.state["status"] == "cancelled"
    assert ended.state["deadline"] is None
    assert ended.emits[-1].payload == {"order_id": ORDER_ID, "reason": "customer_cancelled"}
    assert ended.emits[-1].cause == command["id"]


def test_cancel_keeps_a_given_reason() -> None:
    state = run(*HISTORIES["pending"], cancel("changed_my_mind"), rejected("p1", 2, 0, 5), rejected("p2", 1, 0, 6))

    assert state["status"] == "cancelled" and state["reason"] == "changed_my_mind"


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


def test_payment_timeout_releases_a_reserved_order_then_cancels_it() -> None:
    decision = orders.decide(state_in("reserved"), cancel("payment_timeout"), TIMEOUT)

    assert decision.state is not None
    assert orders.closing(decision.state)["reason"] == "payment_timeout"  # type: ignore[index]
    assert releases(decision.emits) == [("p1", 2), ("p2", 1)]
    state = run(*HISTORIES["reserved"], cancel("payment_timeout"), released("p1", 2, 5), released("p2", 1, 6))
    assert state["status"] == "cancelled"
    assert state["reason"] == "payment_timeout"


def test_a_payment_failure_after_the_payment_timeout_is_kept_once_and_changes_nothing_else() -> None:
    # The gateway timed out after the order was cancelled for payment_timeout: its payment.failed
    # was dropped, missing from GET /orders/{id}/events (probe 19).
    state = run(*HISTORIES["reserved"], cancel("payment_timeout"), released("p1", 2, 5), released("p2", 1, 6))
    late = failed("gateway_timeout", 9)
    decision = orders.decide(state, late, TIMEOUT)
    assert decision.state is not None and decision.emits == []
    assert decision.state["payment"]["answer"] == "gateway_timeout"
    assert {k: v for k, v in decision.state.items() if k != "payment"} == {
        k: v for k, v in state.items() if k != "payment"
    }
    assert orders.to_view(decision.state) == orders.to_view(state)
    assert orders.decide(decision.state, late, TIMEOUT).state is None  # a replay: nothing


def test_an_ending_order_whose_release_never_answers_ends_at_its_deadline() -> None:
    state = run(*HISTORIES["reserved"], failed("card_declined", 3), released("p1", 2, 4))
    assert state["lines"] == {"p1": "released", "p2": "releasing"}
    assert state["deadline"] == parse_ts(ts(3)).timestamp() + TIMEOUT

    timer = orders.deadline_cancel(ORDER_ID, orders.CLOSING, ts(40))
    decision = orders.decide(state, timer, TIMEOUT)

    assert timer["payload"]["reason"] == orders.RELEASE_TIMEOUT
    assert decision.state is not None
    assert decision.state["status"] == "cancelled"
    assert decision.state["reason"] == "card_declined"  # the end's own reason, not the timer's
    assert summary(decision.emits) == [(ORDERS, ORDER_ID, "order.cancelled")]
    assert orders.decide(decision.state, timer, TIMEOUT).state is None  # fired twice: once


@pytest.mark.parametrize("status", ["pending", "reserved", "paid", "confirmed", "rejected", "cancelled"])
def test_a_release_timeout_is_ignored_unless_ending(status: str) -> None:
    decision = orders.decide(state_in(status), cancel(orders.RELEASE_TIMEOUT, second=9), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


def test_an_order_ending_as_rejected_cannot_be_cancelled() -> None:
    state = run(placed(), reserved("p1", 2), rejected("p2", 1, 0, 2))

    assert state["status"] == "pending"
    assert not orders.can_cancel(state)
    assert orders.decide(state, cancel(second=3), TIMEOUT).state is None


@pytest.mark.parametrize("status", ["pending", "paid", "confirmed", "shipped", "delivered", "rejected", "cancelled"])
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


@pytest.mark.parametrize("status", ["pending", "reserved", "paid", "shipped", "delivered", "rejected", "cancelled"])
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


@pytest.mark.parametrize("status", ["pending", "reserved", "paid", "confirmed", "delivered", "rejected", "cancelled"])
def test_deliver_is_refused_unless_shipped(status: str) -> None:
    state = state_in(status)

    decision = orders.decide(state, deliver(second=9), TIMEOUT)

    assert not orders.can_deliver(state)
    assert decision.state is None
    assert decision.emits == []


# --- history-only events, fold, purity ---------------------------------------------------------


def test_a_released_line_of_an_ending_order_is_noted_without_emits() -> None:
    state = run(*HISTORIES["reserved"], cancel(second=3))
    assert state["lines"] == {"p1": "releasing", "p2": "releasing"}

    decision = orders.decide(state, released("p1", 2, second=7), TIMEOUT)

    assert decision.state is not None
    assert decision.state["lines"] == {"p1": "released", "p2": "releasing"}
    assert decision.state["status"] == "reserved"
    assert decision.state["updated_at"] == ts(3)
    assert decision.emits == []


def test_a_line_released_after_the_order_ended_is_noted_without_emits() -> None:
    # The pending deadline ends an order without waiting for lines that never answered.
    state = run(placed(), cancel("pending_timeout", second=1), reserved("p1", 2, 2))
    assert state["status"] == "rejected" and state["lines"]["p1"] == "releasing"

    decision = orders.decide(state, released("p1", 2, second=3), TIMEOUT)

    assert decision.state is not None
    assert decision.state["lines"]["p1"] == "released"
    assert decision.emits == []


@pytest.mark.parametrize(
    "env",
    [released("p1", 2, second=8), committed("p9", 1, second=8)],
    ids=["repeated-release", "unknown-line"],
)
def test_a_repeated_or_unknown_settlement_is_ignored(env: Envelope) -> None:
    state = run(*HISTORIES["reserved"], cancel(second=3), released("p1", 2, second=7))

    decision = orders.decide(state, env, TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


def _saga_output(type_: str, entity_type: str, entity_id: str, **payload: Any) -> Envelope:
    return event(type_, entity_type, entity_id, 8, **payload)


#: What the saga and the other stages write about the order: history for ``as_of``, never input.
OWN_AND_OTHER_EVENTS = [
    _saga_output("order.paid", "order", ORDER_ID, payment_id=PAYMENT_ID, amount="29.99", currency="USD"),
    _saga_output("order.confirmed", "order", ORDER_ID, total="29.99", total_cents=TOTAL_CENTS, currency="USD"),
    _saga_output("order.rejected", "order", ORDER_ID, reason="reservation_timeout", details=[]),
    _saga_output("order.cancelled", "order", ORDER_ID, reason="payment_timeout"),
    _saga_output("order.shipped", "order", ORDER_ID, carrier="UPS", tracking_number="1Z999"),
    _saga_output("order.delivered", "order", ORDER_ID),
    _saga_output("inventory.reserve", "product", "p1", product_id="p1", quantity=2),
    _saga_output("inventory.release", "product", "p1", product_id="p1", quantity=2),
    _saga_output("inventory.commit", "product", "p1", product_id="p1", quantity=2),
    _saga_output("payment.charge", "payment", PAYMENT_ID, payment_id=PAYMENT_ID, amount_cents=TOTAL_CENTS),
    _saga_output("payment.refund", "payment", PAYMENT_ID, payment_id=PAYMENT_ID, charge_id="ch_1"),
    _saga_output("notification.sent", "notification", ORDER_ID),
    _saga_output("analytics.order_recorded", "order", ORDER_ID, total_cents=TOTAL_CENTS, currency="USD"),
]


@pytest.mark.parametrize("status", ["pending", "reserved", "paid", "confirmed", "cancelled"])
@pytest.mark.parametrize("env", OWN_AND_OTHER_EVENTS, ids=lambda e: e["type"])
def test_the_sagas_own_events_commands_and_other_stages_events_are_history_only(status: str, env: Envelope) -> None:
    decision = orders.decide(state_in(status), env, TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


# --- the pending deadline ---------------------------------------------------------------------


def test_place_sets_the_pending_deadline() -> None:
    state = orders.decide(None, placed(), TIMEOUT, PENDING_TIMEOUT).state

    assert state is not None
    assert state["deadline"] == parse_ts(ts(0)).timestamp() + PENDING_TIMEOUT


def test_place_keeps_the_request_hash_of_the_placed_envelope() -> None:
    state = orders.decide(None, placed(metadata={"request_hash": "h-123"}), TIMEOUT).state
    plain = orders.decide(None, placed(), TIMEOUT).state

    assert state is not None and plain is not None
    assert state["request_hash"] == "h-123"
    assert "request_hash" not in plain
    assert "request_hash" not in orders.to_view(state)


def test_pending_timeout_rejects_and_releases_every_line_reserved_or_unanswered() -> None:
    state = run(placed(), reserved("p1", 2))

    timer = cancel("pending_timeout", second=21)
    decision = orders.decide(state, timer, TIMEOUT, PENDING_TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "pending"
    assert orders.closing(decision.state) == {
        "status": "rejected",
        "reason": "reservation_timeout",
        "details": [],
        "cause": timer["id"],
    }
    assert decision.state["deadline"] == parse_ts(ts(21)).timestamp() + PENDING_TIMEOUT
    assert decision.state["updated_at"] == ts(21)
    assert decision.state["payment"]["status"] == "not_charged"
    assert decision.state["lines"] == {"p1": "releasing", "p2": "pending"}
    assert decision.emits == [
        Emit(
            INVENTORY,
            "p1",
            "inventory.release",
            "product",
            "p1",
            {"order_id": ORDER_ID, "product_id": "p1", "quantity": 2},
        ),
        # p2 has no answer: its reservation may have been made and the answer lost.
        Emit(
            INVENTORY,
            "p2",
            "inventory.release",
            "product",
            "p2",
            {"order_id": ORDER_ID, "product_id": "p2", "quantity": 1},
        ),
    ]
    # Only the reserved line is waited for: p2's release may never answer.
    ended = orders.decide(decision.state, released("p1", 2, second=22), TIMEOUT, PENDING_TIMEOUT)
    assert ended.emits == [
        Emit(
            ORDERS,
            ORDER_ID,
            "order.rejected",
            "order",
            ORDER_ID,
            {"order_id": ORDER_ID, "reason": "reservation_timeout", "details": []},
            cause=timer["id"],
        ),
    ]
    assert ended.state is not None and orders.is_final(ended.state)
    assert orders.to_view(ended.state)["reason"] == "reservation_timeout"


def test_pending_timeout_with_nothing_answered_releases_every_line_and_rejects() -> None:
    decision = orders.decide(state_in("pending"), cancel("pending_timeout", second=21), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "rejected"
    assert releases(decision.emits) == [("p1", 2), ("p2", 1)]
    assert summary(decision.emits)[-1] == (ORDERS, ORDER_ID, "order.rejected")


def test_a_release_answered_for_an_unanswered_line_settles_it() -> None:
    state = run(placed(), cancel("pending_timeout", second=21))

    decision = orders.decide(state, released("p1", 2, second=22), TIMEOUT)

    assert decision.state is not None and decision.state["lines"]["p1"] == "released"


def test_a_line_reserved_after_the_pending_timeout_is_released_at_once() -> None:
    state = run(placed(), reserved("p1", 2), cancel("pending_timeout", second=21))

    decision = orders.decide(state, reserved("p2", 1, second=22), TIMEOUT)

    assert decision.state is not None
    assert decision.state["status"] == "pending"
    assert orders.closing(decision.state)["reason"] == "reservation_timeout"  # type: ignore[index]
    assert decision.state["lines"] == {"p1": "releasing", "p2": "releasing"}
    assert decision.emits == [
        Emit(
            INVENTORY,
            "p2",
            "inventory.release",
            "product",
            "p2",
            {"order_id": ORDER_ID, "product_id": "p2", "quantity": 1},
        )
    ]


def test_a_line_rejected_after_the_pending_timeout_is_only_recorded() -> None:
    state = run(placed(), reserved("p1", 2), cancel("pending_timeout", second=21))

    decision = orders.decide(state, rejected("p2", 1, 0, second=22), TIMEOUT)

    assert decision.state is not None
    assert orders.closing(decision.state)["reason"] == "reservation_timeout"  # type: ignore[index]
    assert decision.state["lines"]["p2"] == "rejected"
    assert decision.emits == []


@pytest.mark.parametrize("status", ["reserved", "paid", "confirmed", "shipped", "delivered", "rejected", "cancelled"])
def test_pending_timeout_is_ignored_unless_pending(status: str) -> None:
    decision = orders.decide(state_in(status), cancel("pending_timeout", second=21), TIMEOUT)

    assert decision.state is None
    assert decision.emits == []


def test_a_repeated_pending_timeout_is_ignored() -> None:
    state = run(placed(), reserved("p1", 2), cancel("pending_timeout", second=21))

    decision = orders.decide(state, cancel("pending_timeout", second=22), TIMEOUT)

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


def recorded(*inputs: Envelope) -> tuple[list[Envelope], list[orders.OrderState]]:
    """Run the live transitions; return the history as the saga records it and the state after each input.

    The history holds each handled input followed by every event and command it caused
    (``order.paid``, ``inventory.commit``, ``order.confirmed`` …), stamped at the input's instant.
    """
    history: list[Envelope] = []
    states: list[orders.OrderState] = []
    state: orders.OrderState | None = None
    for env in inputs:
        decision = orders.decide(state, env, TIMEOUT, PENDING_TIMEOUT)
        state = decision.state if decision.state is not None else state
        assert state is not None
        history.append(env)
        for i, e in enumerate(decision.emits):
            out = make(
                e.type,
                e.entity_type,
                e.entity_id,
                e.payload,
                correlation_id=ORDER_ID,
                causation_id=e.cause or env["id"],
                event_id=derived_id(env["id"], i),
                timestamp=env["timestamp"],
            )
            history.append(out)
        states.append(state)
    return history, states


RECORDED_HISTORIES = {
    "delivered": (
        placed(),
        reserved("p1", 2, 1),
        reserved("p2", 1, 2),
        processed(3),
        committed("p1", 2, 4),
        committed("p2", 1, 5),
        ship(6),
        deliver(7),
    ),
    "pending-timeout-then-late-line": (
        placed(),
        reserved("p1", 2, 1),
        cancel("pending_timeout", second=21),
        reserved("p2", 1, 22),
        released("p1", 2, 23),
        released("p2", 1, 24),
    ),
    "payment-timeout-then-paid": (
        placed(),
        reserved("p1", 2, 1),
        reserved("p2", 1, 2),
        cancel("payment_timeout", second=33),
        processed(34),
        released("p1", 2, 35),
    ),
    "declined": (
        placed(),
        reserved("p1", 2, 1),
        reserved("p2", 1, 2),
        failed("card_declined", 3),
        released("p2", 1, 4),
        released("p1", 2, 5),
    ),
}


@pytest.mark.parametrize("inputs", RECORDED_HISTORIES.values(), ids=RECORDED_HISTORIES.keys())
def test_fold_of_the_recorded_history_with_its_own_events_equals_the_live_state(inputs: tuple[Envelope, ...]) -> None:
    history, states = recorded(*inputs)
    assert len(history) > len(inputs)  # the history really holds the saga's own events and commands

    assert orders.fold(history, TIMEOUT, PENDING_TIMEOUT) == states[-1]


@pytest.mark.parametrize("inputs", RECORDED_HISTORIES.values(), ids=RECORDED_HISTORIES.keys())
def test_fold_up_to_each_instant_gives_the_state_live_had_then(inputs: tuple[Envelope, ...]) -> None:
    history, states = recorded(*inputs)

    for env, state in zip(inputs, states, strict=True):
        instant = parse_ts(env["timestamp"])
        as_of = [e for e in history if parse_ts(e["timestamp"]) <= instant]
        assert orders.fold(as_of, TIMEOUT, PENDING_TIMEOUT) == state, env["type"]


def test_as_of_shows_paid_before_confirmed() -> None:
    history, _ = recorded(*RECORDED_HISTORIES["delivered"])

    def status_at(second: int) -> str:
        folded = orders.fold([e for e in history if e["timestamp"] <= ts(second)], TIMEOUT, PENDING_TIMEOUT)
        assert folded is not None
        return str(folded["status"])

    assert [status_at(n) for n in range(8)] == [
        "pending",
        "pending",
        "reserved",
        "paid",
        "paid",
        "confirmed",
        "shipped",
        "delivered",
    ]
    types = [e["type"] for e in history]
    assert types.index("order.paid") < types.index("order.confirmed")
    assert types.count("order.confirmed") == 1


def test_fold_of_no_events_is_nothing() -> None:
    assert orders.fold([], TIMEOUT) is None


MUTATION_HISTORIES = {
    "rejected": [
        placed((("p1", 1, 100), ("p2", 1, 200), ("p3", 1, 300))),
        reserved("p1", 1, 1),
        rejected("p2", 1, 0, 2),
        rejected("p3", 1, 0, 3),
        released("p1", 1, 4),
    ],
    "delivered": list(RECORDED_HISTORIES["delivered"]),
    "pending-timeout": list(RECORDED_HISTORIES["pending-timeout-then-late-line"]),
    "refunded": list(RECORDED_HISTORIES["payment-timeout-then-paid"]),
}


@pytest.mark.parametrize("history", MUTATION_HISTORIES.values(), ids=MUTATION_HISTORIES.keys())
def test_decide_never_mutates_the_state_it_is_given(history: list[Envelope]) -> None:
    state: orders.OrderState | None = None
    for env in history:
        before = copy.deepcopy(state)
        decision = orders.decide(state, env, TIMEOUT, PENDING_TIMEOUT)
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
        ("paid", False),
        ("confirmed", True),
        ("shipped", True),
        ("delivered", True),
        ("rejected", True),
        ("cancelled", True),
    ],
)
def test_is_final(status: str, final: bool) -> None:
    assert orders.is_final(state_in(status)) is final


# --- an ending order: stale timers, histories of the older saga -------------------------------


def test_a_timer_that_read_a_stale_deadline_does_not_end_an_ending_order_early() -> None:
    # The payment failed at 3; a timer reading the deadline index from before that fires at 4.
    state = run(*HISTORIES["reserved"], failed("card_declined", 3))

    stale = orders.decide(state, cancel("payment_timeout", second=4), TIMEOUT)
    late = orders.decide(state, cancel("payment_timeout", second=40), TIMEOUT)

    assert stale.state is None and stale.emits == []
    assert late.state is not None and late.state["status"] == "cancelled"  # its own deadline passed too
    assert late.state["reason"] == "card_declined"


def test_as_of_over_a_history_of_the_older_saga_ends_where_its_end_was() -> None:
    # The saga before the release-first change put order.cancelled in the payment.failed entry.
    failure = failed("card_declined", 3)
    ended = event("order.cancelled", "order", ORDER_ID, 3, reason="card_declined")
    history = [*HISTORIES["reserved"], failure, ended]

    state = orders.fold(history, TIMEOUT)

    assert state is not None
    assert (state["status"], state["reason"], state["updated_at"]) == ("cancelled", "card_declined", ts(3))
    assert orders.closing(state) is None


def test_a_final_order_is_never_ending() -> None:
    state = {**state_in("cancelled"), "closing": {"status": "cancelled", "reason": "x", "details": None, "cause": "c"}}

    assert orders.closing(state) is None
    assert orders.decide(state, released("p1", 2, second=9), TIMEOUT).emits == []
