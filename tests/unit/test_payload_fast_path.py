"""The one-pass payload test agrees with the field-by-field check on every record of the catalogue."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import payloads
from schemas.catalogue import RECORDS
from schemas.payloads import Field, PayloadError

_ODD = st.sampled_from([None, True, False, 0, -1, 1.5, "", "x", "1", "2026-12-02T10:00:00Z", "not a time", [], {}])


def _value(f: Field) -> st.SearchStrategy[Any]:
    """Values of the field's kind (right ones, and near misses), or anything odd."""
    right: st.SearchStrategy[Any]
    if f.kind == "id":
        right = st.text(min_size=1, max_size=3)
    elif f.kind == "str":
        right = st.text(max_size=3)
    elif f.kind == "int":
        right = st.integers(-5, 5)
    elif f.kind == "timestamp":
        right = st.sampled_from(["2026-12-02T10:00:00Z", "2026-12-02T10:00:00.123+00:00", "2026-12-02 10:00"])
    elif f.kind == "list":
        element = _obj(f.fields) if f.fields is not None else _ODD
        right = st.lists(st.one_of(element, _ODD), max_size=3)
    else:
        right = _obj(f.fields) if f.fields is not None else st.dictionaries(st.text(max_size=2), _ODD, max_size=2)
    return st.one_of(right, _ODD)


def _obj(record: dict[str, Field]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with each field of ``record`` present (or not), plus an unknown field now and then."""
    fields = {name: st.one_of(st.just(_ABSENT), _value(f)) for name, f in record.items()}
    fields["extra"] = st.one_of(st.just(_ABSENT), _ODD)
    return st.fixed_dictionaries(fields).map(lambda d: {k: v for k, v in d.items() if v is not _ABSENT})


_ABSENT = object()


def _verdict(record: dict[str, Field], obj: dict[str, Any]) -> bool:
    try:
        payloads.check(record, obj)
    except PayloadError:
        return False
    return True


@pytest.mark.parametrize("type_", sorted(RECORDS))
def test_the_one_pass_test_passes_only_what_the_check_passes(type_: str) -> None:
    record = RECORDS[type_]

    @settings(max_examples=150, deadline=None)
    @given(_obj(record))
    def agree(obj: dict[str, Any]) -> None:
        if payloads._conforms(record, obj):
            assert _verdict(record, obj), obj
        # and check_payload, whichever path it takes, says what the check says
        try:
            payloads.check_payload(type_, obj)
        except PayloadError:
            assert not _verdict(record, obj), obj
        else:
            assert _verdict(record, obj), obj

    agree()


def test_a_well_formed_payload_takes_the_one_pass_path() -> None:
    placed = RECORDS["order.placed"]
    ok = {
        "order_id": "o",
        "user_id": "u",
        "items": [{"product_id": "p", "quantity": 1, "price_cents": 100}],
        "total_cents": 100,
        "payment": {"method": "card", "token": "t", "last4": "4242"},
    }
    assert payloads._conforms(placed, ok)
    assert not payloads._conforms(placed, {**ok, "total_cents": True})  # a bool is not an int
    assert not payloads._conforms(placed, {**ok, "items": [{"product_id": "", "quantity": 1, "price_cents": 1}]})
