"""Per-product stock decisions: reserve, release, commit, restock; idempotency and conservation."""

from __future__ import annotations

import random

import pytest

from app.domain import inventory
from app.domain.common import INVENTORY, ORDERS, Emit
from schemas.envelope import Envelope, make

PRODUCT = "p1"


def stock(on_hand: int, reserved: int = 0, sold: int = 0) -> inventory.Stock:
    return {"on_hand": on_hand, "reserved": reserved, "sold": sold}


def line(type_: str, order_id: str, quantity: int, product_id: str = PRODUCT) -> Envelope:
    """Build an ``inventory.reserve``/``release``/``commit`` command for one order line."""
    payload = {"order_id": order_id, "product_id": product_id, "quantity": quantity}
    return make(type_, "product", product_id, payload, correlation_id=order_id)


def restock_cmd(quantity: int, product_id: str = PRODUCT) -> Envelope:
    return make("inventory.restock", "product", product_id, {"quantity": quantity}, correlation_id=product_id)


def set_stock_cmd(on_hand: int, product_id: str = PRODUCT) -> Envelope:
    return make("inventory.set_stock", "product", product_id, {"on_hand": on_hand}, correlation_id=product_id)


RESERVED = {"state": "reserved", "quantity": 3}


# --- reserve -----------------------------------------------------------------------------------


def test_reserve_takes_available_units() -> None:
    decision = inventory.reserve(stock(10), None, line("inventory.reserve", "o1", 3))

    assert decision.stock == stock(10, reserved=3)
    assert decision.reservation == {"state": "reserved", "quantity": 3}
    assert decision.emits == [
        Emit(
            ORDERS,
            "o1",
            "inventory.reserved",
            "product",
            PRODUCT,
            {"order_id": "o1", "product_id": PRODUCT, "quantity": 3},
        )
    ]


def test_reserve_exactly_what_is_available() -> None:
    decision = inventory.reserve(stock(5, reserved=2), None, line("inventory.reserve", "o1", 3))

    assert decision.stock == stock(5, reserved=5)
    assert inventory.available(decision.stock) == 0


def test_reserve_more_than_available_rejects_and_says_how_many_were_left() -> None:
    decision = inventory.reserve(stock(5, reserved=3), None, line("inventory.reserve", "o1", 3))

    assert decision.stock is None
    assert decision.reservation == {"state": "rejected", "quantity": 3, "available": 2}
    assert decision.emits == [
        Emit(
            ORDERS,
            "o1",
            "inventory.rejected",
            "product",
            PRODUCT,
            {"order_id": "o1", "product_id": PRODUCT, "quantity": 3, "requested": 3, "available": 2},
        )
    ]


def test_reserve_an_unknown_product_rejects_with_nothing_available() -> None:
    decision = inventory.reserve(inventory.empty_stock(), None, line("inventory.reserve", "o1", 1))

    assert decision.emits[0].type == "inventory.rejected"
    assert decision.emits[0].payload["available"] == 0


def _answer(type_: str, quantity: int, **extra: int) -> Emit:
    payload = {"order_id": "o1", "product_id": PRODUCT, "quantity": quantity, **extra}
    return Emit(ORDERS, "o1", type_, "product", PRODUCT, payload)


@pytest.mark.parametrize("state", ["reserved", "released", "committed"])
def test_a_repeated_reserve_re_emits_reserved_and_changes_nothing(state: str) -> None:
    decision = inventory.reserve(
        stock(10, reserved=3), {**RESERVED, "state": state}, line("inventory.reserve", "o1", 3)
    )

    assert decision.stock is None
    assert decision.reservation is None
    assert decision.emits == [_answer("inventory.reserved", 3)]


def test_a_repeated_reserve_answers_with_the_reserved_quantity() -> None:
    decision = inventory.reserve(stock(10, reserved=3), RESERVED, line("inventory.reserve", "o1", 5))

    assert decision.emits == [_answer("inventory.reserved", 3)]


def test_a_repeated_reserve_of_a_rejected_line_re_emits_the_rejection() -> None:
    first = inventory.reserve(stock(5, reserved=3), None, line("inventory.reserve", "o1", 3))
    assert first.reservation is not None

    # Stock was added since: the order still gets the answer it got, not a new reservation.
    again = inventory.reserve(stock(50, reserved=3), first.reservation, line("inventory.reserve", "o1", 3))

    assert again.stock is None
    assert again.reservation is None
    assert again.emits == first.emits == [_answer("inventory.rejected", 3, requested=3, available=2)]


def test_a_repeated_reserve_of_a_rejection_recorded_without_available_says_zero() -> None:
    old_record = {"state": "rejected", "quantity": 3}  # written before ``available`` was kept

    decision = inventory.reserve(stock(10), old_record, line("inventory.reserve", "o1", 3))

    assert decision.emits == [_answer("inventory.rejected", 3, requested=3, available=0)]


@pytest.mark.parametrize("quantity", [0, -1])
def test_reserve_refuses_a_non_positive_quantity(quantity: int) -> None:
    with pytest.raises(ValueError):
        inventory.reserve(stock(10), None, line("inventory.reserve", "o1", quantity))


# --- release -----------------------------------------------------------------------------------


def test_release_gives_the_reserved_units_back() -> None:
    decision = inventory.release(stock(10, reserved=3), RESERVED, line("inventory.release", "o1", 3))

    assert decision.stock == stock(10)
    assert decision.reservation == {"state": "released", "quantity": 3}
    assert [(e.topic, e.key, e.type, e.payload["quantity"]) for e in decision.emits] == [
        (ORDERS, "o1", "inventory.released", 3)
    ]


def test_release_gives_back_what_was_reserved_not_what_the_command_says() -> None:
    decision = inventory.release(stock(10, reserved=3), RESERVED, line("inventory.release", "o1", 7))

    assert decision.stock == stock(10)
    assert decision.emits[0].payload["quantity"] == 3


def test_a_repeated_release_re_emits_released_and_changes_nothing() -> None:
    first = inventory.release(stock(10, reserved=3), RESERVED, line("inventory.release", "o1", 3))
    assert first.stock is not None and first.reservation is not None

    again = inventory.release(first.stock, first.reservation, line("inventory.release", "o1", 3))

    assert again.stock is None
    assert again.reservation is None
    assert again.emits == first.emits == [_answer("inventory.released", 3)]


@pytest.mark.parametrize(
    "reservation",
    [None, {"state": "rejected", "quantity": 3}, {"state": "committed", "quantity": 3}],
    ids=["never-reserved", "rejected", "committed"],
)
def test_release_of_anything_but_a_reservation_is_a_no_op(reservation: inventory.Reservation | None) -> None:
    decision = inventory.release(stock(10, reserved=3), reservation, line("inventory.release", "o1", 3))

    assert decision == inventory.Decision()


# --- commit ------------------------------------------------------------------------------------


def test_commit_turns_reserved_units_into_sold_units() -> None:
    decision = inventory.commit(stock(10, reserved=3), RESERVED, line("inventory.commit", "o1", 3))

    assert decision.stock == stock(7, reserved=0, sold=3)
    assert decision.reservation == {"state": "committed", "quantity": 3}
    assert [(e.topic, e.key, e.type, e.payload["quantity"]) for e in decision.emits] == [
        (ORDERS, "o1", "inventory.committed", 3)
    ]


def test_a_repeated_commit_re_emits_committed_and_sells_nothing_more() -> None:
    first = inventory.commit(stock(10, reserved=3), RESERVED, line("inventory.commit", "o1", 3))
    assert first.stock is not None and first.reservation is not None

    again = inventory.commit(first.stock, first.reservation, line("inventory.commit", "o1", 3))

    assert again.stock is None
    assert again.reservation is None
    assert again.emits == first.emits == [_answer("inventory.committed", 3)]


@pytest.mark.parametrize(
    "reservation",
    [None, {"state": "rejected", "quantity": 3}, {"state": "released", "quantity": 3}],
    ids=["never-reserved", "rejected", "released"],
)
def test_commit_of_anything_but_a_reservation_is_a_no_op(reservation: inventory.Reservation | None) -> None:
    decision = inventory.commit(stock(10, reserved=3), reservation, line("inventory.commit", "o1", 3))

    assert decision == inventory.Decision()


# --- restock / set_stock -----------------------------------------------------------------------


def test_restock_adds_units_on_hand() -> None:
    decision = inventory.restock(stock(10, reserved=2, sold=1), restock_cmd(5))

    assert decision.stock == stock(15, reserved=2, sold=1)
    assert decision.reservation is None
    assert decision.emits == [
        Emit(
            INVENTORY,
            PRODUCT,
            "inventory.restocked",
            "product",
            PRODUCT,
            {"product_id": PRODUCT, "delta": 5, "on_hand": 15},
        )
    ]


@pytest.mark.parametrize("quantity", [0, -3])
def test_restock_refuses_a_non_positive_quantity(quantity: int) -> None:
    with pytest.raises(inventory.StockError):
        inventory.restock(stock(10), restock_cmd(quantity))


def test_restock_refuses_to_take_on_hand_past_its_bound() -> None:
    full = stock(inventory.MAX_ON_HAND - 5)
    assert inventory.restock(full, restock_cmd(5)).stock == stock(inventory.MAX_ON_HAND)
    with pytest.raises(inventory.StockError):
        inventory.restock(full, restock_cmd(6))


@pytest.mark.parametrize(("target", "delta"), [(25, 15), (4, -6), (10, 0)])
def test_set_stock_sets_units_on_hand(target: int, delta: int) -> None:
    decision = inventory.restock(stock(10, reserved=4), set_stock_cmd(target))

    assert decision.stock == stock(target, reserved=4)
    assert decision.emits[0].payload == {"product_id": PRODUCT, "delta": delta, "on_hand": target}


@pytest.mark.parametrize("target", [3, -1])
def test_set_stock_below_the_reserved_units_is_refused(target: int) -> None:
    with pytest.raises(inventory.StockError, match="reserved"):
        inventory.restock(stock(10, reserved=4), set_stock_cmd(target))


# --- read model --------------------------------------------------------------------------------


def test_view_of_an_unknown_product_is_all_zeros() -> None:
    assert inventory.to_view("nope", None) == {
        "product_id": "nope",
        "on_hand": 0,
        "reserved": 0,
        "sold": 0,
        "available": 0,
    }


def test_view_shows_available_units() -> None:
    view = inventory.to_view(PRODUCT, stock(10, reserved=3, sold=5))

    assert view == {"product_id": PRODUCT, "on_hand": 10, "reserved": 3, "sold": 5, "available": 7}


# --- invariants over a random history ----------------------------------------------------------


def test_stock_is_conserved_and_never_negative_over_random_operations() -> None:
    rng = random.Random(20240501)
    products = ["p1", "p2", "p3"]
    stocks = {p: inventory.empty_stock() for p in products}
    restocked = dict.fromkeys(products, 0)
    reservations: dict[tuple[str, str], inventory.Reservation] = {}
    orders_seen: list[str] = []

    for step in range(1000):
        pid = rng.choice(products)
        op = rng.choice(["reserve", "reserve", "release", "commit", "restock", "set_stock"])
        if op == "reserve":
            # Mostly new orders, sometimes a replay of an old one.
            order_id = rng.choice(orders_seen) if orders_seen and rng.random() < 0.2 else f"o{step}"
            orders_seen.append(order_id)
            env = line("inventory.reserve", order_id, rng.randint(1, 6), pid)
            decision = inventory.reserve(stocks[pid], reservations.get((order_id, pid)), env)
        elif op in ("release", "commit"):
            if not orders_seen:
                continue
            order_id = rng.choice(orders_seen)
            env = line(f"inventory.{op}", order_id, 1, pid)
            decide = inventory.release if op == "release" else inventory.commit
            decision = decide(stocks[pid], reservations.get((order_id, pid)), env)
        elif op == "restock":
            decision = inventory.restock(stocks[pid], restock_cmd(rng.randint(1, 10), pid))
        else:
            try:
                decision = inventory.restock(stocks[pid], set_stock_cmd(rng.randint(0, 20), pid))
            except inventory.StockError:
                continue
        if decision.stock is not None:
            for e in decision.emits:
                if e.type == "inventory.restocked":
                    restocked[pid] += e.payload["delta"]
            stocks[pid] = decision.stock
        if decision.reservation is not None:
            reservations[(env["payload"]["order_id"], pid)] = decision.reservation

        for p in products:
            s = stocks[p]
            assert min(s.values()) >= 0, f"step {step}: negative stock {s} for {p}"
            assert inventory.available(s) >= 0, f"step {step}: overbooked {s} for {p}"
            assert restocked[p] == inventory.available(s) + s["reserved"] + s["sold"], f"step {step}: {p} not conserved"
            held = sum(r["quantity"] for (_, rp), r in reservations.items() if rp == p and r["state"] == "reserved")
            assert s["reserved"] == held, f"step {step}: {p} reserved {s['reserved']} but reservations hold {held}"

    # The sequence really exercised every path.
    states = {r["state"] for r in reservations.values()}
    assert states == {"reserved", "rejected", "released", "committed"}
    assert sum(s["sold"] for s in stocks.values()) > 0
