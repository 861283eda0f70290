"""Card checks at the edge: Luhn, normalisation, expiry."""

from __future__ import annotations

import pytest

from app.domain.cards import expiry_valid, luhn_valid, normalize_number

SPEC_TEST_CARDS = [
    "4242424242424242",
    "4000000000000002",
    "4000000000009995",
    "4000000000000119",
    "4000000000000341",
]


@pytest.mark.parametrize("number", [*SPEC_TEST_CARDS, "5555555555554444", "378282246310005"])
def test_spec_and_network_test_cards_pass_luhn(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number",
    [
        pytest.param("4242424242424241", id="bad-check-digit"),
        pytest.param("4242 4242 4242 4242", id="not-normalized"),
        pytest.param("42424242424242a2", id="letter"),
        pytest.param("", id="empty"),
        pytest.param("00000000000", id="too-short"),
        pytest.param("0" * 20, id="too-long"),
    ],
)
def test_invalid_numbers_fail_luhn(number: str) -> None:
    assert not luhn_valid(number)


def test_normalize_drops_spaces_and_dashes() -> None:
    assert normalize_number("4242 4242-4242 4242") == "4242424242424242"


@pytest.mark.parametrize(
    ("expiry", "valid"),
    [
        ("06/25", True),  # the current month still counts
        ("12/25", True),
        ("01/26", True),
        ("05/25", False),
        ("12/24", False),
        ("6/25", False),
        ("13/25", False),
        ("00/25", False),
        ("06-25", False),
        ("06/2025", False),
        ("", False),
    ],
)
def test_expiry_must_be_mm_yy_and_not_past(expiry: str, valid: bool) -> None:
    assert expiry_valid(expiry, 2025, 6) is valid
