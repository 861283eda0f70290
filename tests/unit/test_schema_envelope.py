"""The envelope every message travels in: building it and checking its shape."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.envelope import ENVELOPE_FIELDS, EnvelopeError, derived_id, make, parse_ts, validate


def wire() -> dict[str, Any]:
    """A well-formed envelope as it comes off the wire."""
    return dict(
        make(
            "order.placed",
            "order",
            "ord-1",
            {"order_id": "ord-1"},
            correlation_id="ord-1",
            event_id="e-1",
            timestamp="2024-05-01T12:00:00.000Z",
            version=2,
            metadata={"source": "api"},
        )
    )


def test_make_fills_every_envelope_field() -> None:
    env = make("order.cancel", "order", "ord-1", {"order_id": "ord-1"}, correlation_id="ord-1", causation_id="e-0")

    assert tuple(env) == ENVELOPE_FIELDS
    assert env["version"] == 1
    assert env["metadata"] == {}
    assert env["causation_id"] == "e-0"
    assert parse_ts(env["timestamp"]).tzinfo is not None
    assert env["timestamp"].endswith("Z")


def test_make_gives_every_message_its_own_id() -> None:
    ids = {make("order.cancel", "order", "o", {}, correlation_id="o")["id"] for _ in range(3)}

    assert len(ids) == 3


def test_validate_accepts_a_well_formed_envelope_unchanged() -> None:
    assert validate(wire()) == wire()


@pytest.mark.parametrize("field", ["id", "type", "entity_id", "version", "payload"])
def test_validate_refuses_a_missing_required_field(field: str) -> None:
    obj = wire()
    del obj[field]

    with pytest.raises(EnvelopeError, match=field):
        validate(obj)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 7),
        ("id", ""),
        ("type", None),
        ("entity_id", ["ord-1"]),
        ("version", "2"),
        ("version", 2.0),
        ("version", True),
        ("payload", []),
        ("payload", "{}"),
        ("correlation_id", 1),
        ("causation_id", 1),
        ("entity_type", {}),
        ("timestamp", 1714564800),
        ("metadata", ["source"]),
    ],
)
def test_validate_refuses_a_field_of_the_wrong_type(field: str, value: Any) -> None:
    obj = {**wire(), field: value}

    with pytest.raises(EnvelopeError, match=field):
        validate(obj)


@pytest.mark.parametrize("obj", [None, [], "order.placed", 1])
def test_validate_refuses_anything_but_an_object(obj: Any) -> None:
    with pytest.raises(EnvelopeError, match="not an object"):
        validate(obj)


def test_validate_fills_optional_fields_with_defaults() -> None:
    env = validate({"id": "e-1", "type": "inventory.restock", "entity_id": "p1", "version": 1, "payload": {}})

    assert env["entity_type"] == "inventory"
    assert env["correlation_id"] == "p1"
    assert env["causation_id"] is None
    assert env["metadata"] == {}
    assert parse_ts(env["timestamp"]).tzinfo is not None


def test_validate_allows_null_optional_fields() -> None:
    env = validate({**wire(), "causation_id": None, "metadata": None})

    assert env["causation_id"] is None


@pytest.mark.parametrize(
    "text",
    ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.000Z", "2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00"],
)
def test_parse_ts_reads_utc_offsets_and_naive_times_as_utc(text: str) -> None:
    assert parse_ts(text) == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_derived_ids_are_stable_and_distinct() -> None:
    assert derived_id("e-1", 0) == derived_id("e-1", 0)
    assert len({derived_id("e-1", 0), derived_id("e-1", 1), derived_id("e-2", 0)}) == 3


@pytest.mark.parametrize(
    "text",
    ["2026-12-05T07:30:00Z", "2026-12-05T07:30:00z", "2026-12-05t07:30:00.5Z", "2026-12-05Z", "2026-12-05T07:30:00"],
)
def test_parse_ts_reads_z_of_either_case_and_naive_as_utc(text: str) -> None:
    from datetime import UTC

    from schemas.envelope import parse_ts

    ts = parse_ts(text)
    assert ts.utcoffset() is not None and ts.astimezone(UTC).date().isoformat() == "2026-12-05"


@pytest.mark.parametrize("text", ["", "Z", "z", "2026-12-05T07:30:00ZZ", "2026-12-05T07:30:00Z ", "yesterday"])
def test_parse_ts_refuses_what_is_not_an_instant(text: str) -> None:
    from schemas.envelope import parse_ts

    with pytest.raises(ValueError):
        parse_ts(text)
