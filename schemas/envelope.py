"""The one envelope every message on every topic travels in.

``id, type, entity_type, entity_id, timestamp, version, correlation_id, causation_id,
payload, metadata`` — see SPEC §3. Events are named in the past tense
(``order.placed``); commands, which only travel between our own stages, in the
imperative (``inventory.reserve``).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any, TypedDict

NAMESPACE = uuid.UUID("6f1c2a4e-6b1d-4c55-9a53-0f5d7e1b2c3a")
_NAMESPACE_BYTES = NAMESPACE.bytes

ENVELOPE_FIELDS = (
    "id",
    "type",
    "entity_type",
    "entity_id",
    "timestamp",
    "version",
    "correlation_id",
    "causation_id",
    "payload",
    "metadata",
)


class Envelope(TypedDict):
    """The wire shape of every message."""

    id: str
    type: str
    entity_type: str
    entity_id: str
    timestamp: str
    version: int
    correlation_id: str
    causation_id: str | None
    payload: dict[str, Any]
    metadata: dict[str, Any]


class EnvelopeError(ValueError):
    """A message is not a well-formed envelope."""


_last_ms: list[Any] = [-1, ""]


def now_iso() -> str:
    """Return the current UTC time in ISO-8601 with milliseconds (formatted once per millisecond)."""
    ms = int(time.time() * 1000)
    if ms != _last_ms[0]:
        _last_ms[0] = ms
        _last_ms[1] = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return _last_ms[1]  # type: ignore[no-any-return]


def parse_ts(value: str) -> datetime:
    """Parse an ISO-8601 timestamp (``Z``, ``z`` or offset); naive means UTC.

    Every event's timestamp is checked with it: Python 3.11 reads ``...Z`` itself, so only what
    it refuses (a lower-case ``z``, a date alone with ``Z``) is read again with ``+00:00``.
    """
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        if value[-1:] not in ("Z", "z"):
            raise
        ts = datetime.fromisoformat(value[:-1] + "+00:00")
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def derived_id(cause_id: str, index: int) -> str:
    """Return the id of the ``index``-th message caused by ``cause_id``; the same on every replay.

    ``uuid5(NAMESPACE, f"{cause_id}/{index}")``, computed without building UUID objects
    (this runs for every event the stages emit).
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{cause_id}/{index}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def make(
    type_: str,
    entity_type: str,
    entity_id: str,
    payload: dict[str, Any],
    *,
    correlation_id: str,
    causation_id: str | None = None,
    event_id: str | None = None,
    timestamp: str | None = None,
    version: int = 1,
    metadata: dict[str, Any] | None = None,
) -> Envelope:
    """Build an envelope."""
    return Envelope(
        id=event_id or str(uuid.uuid4()),
        type=type_,
        entity_type=entity_type,
        entity_id=entity_id,
        timestamp=timestamp or now_iso(),
        version=version,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=payload,
        metadata=metadata or {},
    )


def validate(obj: Any) -> Envelope:
    """Check the envelope's shape (not its payload); raise :class:`EnvelopeError` if wrong."""
    if _complete(obj):
        return obj  # type: ignore[no-any-return]  # every field present and of its type: the common case
    return _validate(obj)


def _complete(obj: Any) -> bool:
    """Whether ``obj`` is an envelope with every field present and right (what the stages send): one pass."""
    if type(obj) is not dict or len(obj) != len(ENVELOPE_FIELDS):
        return False
    get = obj.get
    id_, type_, entity_id = get("id"), get("type"), get("entity_id")
    if not (type(id_) is str and id_ and type(type_) is str and type_ and type(entity_id) is str and entity_id):
        return False
    if type(get("version")) is not int or type(get("payload")) is not dict or type(get("metadata")) is not dict:
        return False
    causation = get("causation_id")
    if type(get("correlation_id")) is not str or type(get("entity_type")) is not str:
        return False
    if causation is not None and type(causation) is not str:
        return False
    ts = get("timestamp")
    if type(ts) is not str:
        return False
    try:
        datetime.fromisoformat(ts)
    except ValueError:
        return False
    return True


def _validate(obj: Any) -> Envelope:
    """The field-by-field check, with the error that names what is wrong."""
    if not isinstance(obj, dict):
        raise EnvelopeError(f"message is a JSON {type(obj).__name__}, not an object")
    missing = [f for f in ("id", "type", "entity_id", "version", "payload") if f not in obj]
    if missing:
        raise EnvelopeError(f"envelope lacks field(s): {', '.join(missing)}")
    for name in ("id", "type", "entity_id"):
        if not isinstance(obj[name], str) or not obj[name]:
            raise EnvelopeError(f"envelope field {name!r} must be a non-empty string")
    if not isinstance(obj["version"], int) or isinstance(obj["version"], bool):
        raise EnvelopeError("envelope field 'version' must be an integer")
    if not isinstance(obj["payload"], dict):
        raise EnvelopeError("envelope field 'payload' must be an object")
    for name in ("correlation_id", "causation_id", "entity_type", "timestamp"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise EnvelopeError(f"envelope field {name!r} must be a string")
    if obj.get("timestamp") is not None:
        try:
            parse_ts(obj["timestamp"])
        except ValueError:
            raise EnvelopeError("envelope field 'timestamp' must be an ISO-8601 instant") from None
    if obj.get("metadata") is not None and not isinstance(obj["metadata"], dict):
        raise EnvelopeError("envelope field 'metadata' must be an object")
    obj.setdefault("entity_type", obj["type"].split(".", 1)[0])
    obj.setdefault("correlation_id", obj["entity_id"])
    obj.setdefault("causation_id", None)
    obj.setdefault("timestamp", now_iso())
    obj.setdefault("metadata", {})
    return obj  # type: ignore[return-value]  # checked field by field above


# The type lists live in the one catalogue (imported last: the catalogue's payload records use parse_ts above).
from schemas.catalogue import COMMAND_TYPES, EVENT_TYPES  # noqa: E402

__all__ = [
    "COMMAND_TYPES",
    "EVENT_TYPES",
    "Envelope",
    "EnvelopeError",
    "derived_id",
    "make",
    "now_iso",
    "parse_ts",
    "validate",
]
