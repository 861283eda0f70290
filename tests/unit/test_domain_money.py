"""Money helpers: integer cents inside, decimal strings outside, never a float."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.common import MoneyError, from_cents, to_cents


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        ("12.50", 1250),
        ("12.5", 1250),
        (12.5, 1250),
        (12, 1200),
        ("12", 1200),
        (" 3.10 ", 310),
        ("0.01", 1),
        ("0", 0),
        (0, 0),
        (19.99, 1999),
        ("1000000.00", 100_000_000),
    ],
)
def test_to_cents_parses_decimals(value: Any, cents: int) -> None:
    assert to_cents(value) == cents


def test_decimal_strings_add_up_exactly() -> None:
    assert to_cents("0.1") + to_cents("0.2") == to_cents("0.3") == 30
    assert from_cents(to_cents("0.1") + to_cents("0.2")) == "0.30"


@pytest.mark.parametrize("value", ["12.505", "0.001", 0.125, 0.1 + 0.2], ids=["str", "tiny", "float", "float-noise"])
def test_more_than_two_decimal_places_is_rejected(value: Any) -> None:
    with pytest.raises(MoneyError, match="two decimal places"):
        to_cents(value)


@pytest.mark.parametrize("value", ["-1.00", -5, -0.01])
def test_negative_amounts_are_rejected(value: Any) -> None:
    with pytest.raises(MoneyError, match="non-negative"):
        to_cents(value)


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_money(value: bool) -> None:
    with pytest.raises(MoneyError):
        to_cents(value)


@pytest.mark.parametrize("value", [None, [], {}, "", "abc", "12,50", "NaN", "Infinity", float("inf"), float("nan")])
def test_non_numbers_are_rejected(value: Any) -> None:
    with pytest.raises(MoneyError):
        to_cents(value)


@pytest.mark.parametrize(
    ("cents", "text"),
    [(0, "0.00"), (5, "0.05"), (10, "0.10"), (1250, "12.50"), (123456789, "1234567.89"), (-5, "-0.05")],
)
def test_from_cents_formats_two_places(cents: int, text: str) -> None:
    assert from_cents(cents) == text


@pytest.mark.parametrize("cents", [0, 1, 99, 100, 2999, 10**15 + 7])
def test_cents_round_trip(cents: int) -> None:
    assert to_cents(from_cents(cents)) == cents
