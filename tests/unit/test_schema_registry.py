"""Schema evolution: upcasting on read, unknown types and versions, stored old payloads."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from app.domain import orders
from schemas.envelope import COMMAND_TYPES, EVENT_TYPES, Envelope, make, validate
from schemas.registry import CURRENT_VERSION, UnknownMessageError, current_version, upcast

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "order_placed_v1"
V1_FILES = sorted(FIXTURES.glob("*.json"))


def placed_v1(**extra: Any) -> Envelope:
    payload = {
        "order_id": "ord-1",
        "user_id": "u-1",
        "user_email": "ada@example.com",
        "items": [
            {"product_id": "p1", "quantity": 2, "price": 12.5},
            {"product_id": "p2", "quantity": 1, "price": 4.99},
        ],
        "total": 29.99,
        "payment": {"method": "card", "token": "tok_ok_abc", "last4": "4242"},
        **extra,
    }
    return make("order.placed", "order", "ord-1", payload, correlation_id="ord-1", version=1)


def test_order_placed_v1_upcasts_to_v2_in_cents() -> None:
    env = upcast(placed_v1())

    assert env["version"] == 2 == current_version("order.placed")
    assert env["payload"]["items"] == [
        {"product_id": "p1", "quantity": 2, "price_cents": 1250},
        {"product_id": "p2", "quantity": 1, "price_cents": 499},
    ]
    assert env["payload"]["total_cents"] == 2999
    assert env["payload"]["currency"] == "USD"
    assert "total" not in env["payload"]


def test_upcast_keeps_the_rest_of_the_envelope() -> None:
    original = placed_v1()

    env = upcast(original)

    assert {k: v for k, v in env.items() if k not in ("payload", "version")} == {
        k: v for k, v in original.items() if k not in ("payload", "version")
    }
    assert env["payload"]["payment"] == original["payload"]["payment"]


def test_upcast_leaves_the_stored_message_alone() -> None:
    original = placed_v1()
    before = copy.deepcopy(original)

    upcast(original)

    assert original == before


def test_a_v1_currency_is_kept() -> None:
    assert upcast(placed_v1(currency="EUR"))["payload"]["currency"] == "EUR"


@pytest.mark.parametrize(("price", "cents"), [(0.1, 10), (19.99, 1999), (1299.0, 129900), (2.675, 268), ("7.5", 750)])
def test_v1_prices_become_cents_rounding_half_up(price: Any, cents: int) -> None:
    env = placed_v1()
    env["payload"]["items"] = [{"product_id": "p1", "quantity": 1, "price": price}]

    assert upcast(env)["payload"]["items"][0]["price_cents"] == cents


def test_unknown_fields_pass_through_upcasting() -> None:
    env = placed_v1(gift_note="happy birthday")
    env["payload"]["items"][0]["engraving"] = "ADA"

    payload = upcast(env)["payload"]

    assert payload["gift_note"] == "happy birthday"
    assert payload["items"][0]["engraving"] == "ADA"


def test_a_current_message_with_an_unknown_optional_field_still_loads_and_decides() -> None:
    env = upcast(placed_v1())
    env["payload"]["gift_note"] = "happy birthday"

    assert upcast(env) is env
    assert orders.decide(None, env, 30.0).state is not None


def test_a_current_version_is_returned_as_is() -> None:
    env = upcast(placed_v1())

    assert upcast(env) is env


@pytest.mark.parametrize("type_", sorted((EVENT_TYPES | COMMAND_TYPES) - set(CURRENT_VERSION)))
def test_every_known_type_reads_at_version_1(type_: str) -> None:
    env = make(type_, "x", "id-1", {"k": "v"}, correlation_id="id-1")

    assert upcast(env) is env


@pytest.mark.parametrize("type_", ["order.exploded", "ORDER.PLACED", ""])
def test_an_unknown_type_is_refused(type_: str) -> None:
    env = make(type_, "order", "ord-1", {}, correlation_id="ord-1")

    with pytest.raises(UnknownMessageError, match="unknown message type"):
        upcast(env)


@pytest.mark.parametrize("version", [99, 3, 0, -1])
def test_an_unknown_version_is_refused(version: int) -> None:
    env = {**placed_v1(), "version": version}

    with pytest.raises(UnknownMessageError, match=f"unknown version {version}"):
        upcast(env)  # type: ignore[arg-type]  # a plain dict shaped like an envelope


# --- stored v1 payloads still load -------------------------------------------------------------


def test_stored_v1_fixtures_exist() -> None:
    assert len(V1_FILES) == 3


@pytest.mark.parametrize("path", V1_FILES, ids=lambda p: p.stem)
def test_stored_fixture_is_a_v1_order_placed(path: Path) -> None:
    raw = json.loads(path.read_text())

    assert raw["version"] == 1
    assert raw["type"] == "order.placed"
    assert all(isinstance(i["price"], float) for i in raw["payload"]["items"])
    assert "currency" not in raw["payload"]


@pytest.mark.parametrize("path", V1_FILES, ids=lambda p: p.stem)
def test_stored_v1_order_is_accepted_by_todays_saga(path: Path) -> None:
    raw = json.loads(path.read_text())
    env = upcast(validate(raw))

    decision = orders.decide(None, env, 30.0)

    state = decision.state
    assert state is not None
    assert state["status"] == "pending"
    assert state["currency"] == "USD"
    assert state["total_cents"] == int(Decimal(str(raw["payload"]["total"])) * 100)
    assert state["payment"]["token"] == raw["payload"]["payment"]["token"]
    expected_lines = [(i["product_id"], i["quantity"]) for i in raw["payload"]["items"]]
    assert [(e.type, e.key, e.payload["quantity"]) for e in decision.emits] == [
        ("inventory.reserve", pid, qty) for pid, qty in expected_lines
    ]


@pytest.mark.parametrize("path", V1_FILES, ids=lambda p: p.stem)
def test_stored_v1_order_goes_on_to_charge_its_exact_total(path: Path) -> None:
    raw = json.loads(path.read_text())
    env = upcast(validate(raw))
    order_id = env["entity_id"]
    state = orders.decide(None, env, 30.0).state
    emits = []
    for item in env["payload"]["items"]:
        answer = make(
            "inventory.reserved",
            "product",
            item["product_id"],
            {"order_id": order_id, "product_id": item["product_id"], "quantity": item["quantity"]},
            correlation_id=order_id,
            timestamp=env["timestamp"],
        )
        decision = orders.decide(state, answer, 30.0)
        state, emits = decision.state, decision.emits

    assert state is not None
    assert state["status"] == "reserved"
    assert [e.type for e in emits] == ["payment.charge"]
    assert emits[0].payload["amount_cents"] == state["total_cents"]
    assert emits[0].payload["currency"] == "USD"
