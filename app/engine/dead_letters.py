"""Describe a message a stage could not process as an ``event.processing.failed`` envelope.

The dead letter keeps the error, a short stack summary, the source topic, partition and
offset, and the original value as it came (JSON when it parsed, else text); it goes to
``{source topic}.dlq`` keyed by its own id, which derives from the source position, so
the same failure dead-letters under the same id on every replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from app.engine.step import MAX_RECORD_BYTES
from schemas.envelope import derived_id, make

if TYPE_CHECKING:
    from app.engine.runtime import Record

#: Largest dead letter sent whole: a step sends no record over ``MAX_RECORD_BYTES`` and a
#: dead letter is its original plus error and stack (and its key), so an input close to the
#: broker's 1 MiB limit keeps only its first ``OVERSIZED_PREFIX_BYTES`` (``original_kind:
#: "truncated"``, never redriven); the whole message stays readable at its source offset.
MAX_DEAD_LETTER_BYTES = MAX_RECORD_BYTES - 4096
OVERSIZED_PREFIX_BYTES = 64 * 1024
#: Longest key and id a letter copies from the message (a Kafka key may take most of a MiB):
#: past it the key is kept as a prefix (``key_truncated``, never redriven: it would land
#: under another key) and an id is left out, so the letter always fits beside its original.
MAX_KEY_CHARS = 1024
MAX_ID_CHARS = 256


def dead_letter(stage: str, record: Record, error: BaseException) -> tuple[str, bytes, bytes]:
    """``(dead-letter topic, key, value)`` for ``record``, which failed in ``stage`` with ``error``.

    A failure on a dead-letter topic stays on it (a letter about the message, never
    redriven): nothing reads a ``.dlq.dlq``.
    """
    from app.engine.runtime import dead_letter_payload

    raw = record.value or b""
    original: Any
    try:
        original, original_kind = orjson.loads(raw), "json"
    except orjson.JSONDecodeError:
        original, original_kind = raw.decode("utf-8", errors="replace"), "text"
    dl_id = derived_id(f"{record.topic}/{record.partition}/{record.offset}", 0)
    source_id = _text_field(original, "id")
    key, key_kept = _key_text(record.key)
    payload = {
        "dlq_id": dl_id,
        **dead_letter_payload(stage, record, error),
        "key": key,
        **({} if key_kept else {"key_truncated": True}),
        "attempts": int(getattr(error, "attempts", 1)),
        **({"answered": 409} if getattr(error, "answered", None) == 409 else {}),
        "original": original,
        "original_kind": original_kind,
        "original_id": source_id,
    }
    letter = make(
        "event.processing.failed",
        "dead_letter",
        dl_id,
        payload,
        correlation_id=_text_field(original, "correlation_id") or dl_id,
        causation_id=source_id,
        event_id=dl_id,
    )
    try:
        value = orjson.dumps(letter)
    except orjson.JSONEncodeError:
        # orjson reads 1,024 levels of nesting and writes 254: an original it cannot write
        # again is kept as its text (a letter that cannot be written would lose the message).
        payload["original"], payload["original_kind"] = raw.decode("utf-8", errors="replace"), "text"
        value = orjson.dumps(letter)
    if len(value) > MAX_DEAD_LETTER_BYTES:
        payload["original"] = raw[:OVERSIZED_PREFIX_BYTES].decode("utf-8", errors="replace")
        payload["original_kind"] = "truncated"
        payload["original_bytes"] = len(raw)
        value = orjson.dumps(letter)
    topic = record.topic if record.topic.endswith(".dlq") else f"{record.topic}.dlq"
    return topic, dl_id.encode(), value


def redrivable(letter: dict[str, Any]) -> bool:
    """Whether a stored letter can be re-sent: it kept its whole original, came from a stage topic,
    and its command was not refused to a client waiting for it.

    An oversized original keeps a prefix only (and a key too long or not UTF-8, a readable
    stand-in); a message that could not be read on a
    dead-letter topic itself is kept listable, but sending it back there would only
    dead-letter it again. A command its stage refused while the HTTP edge waited for it
    (``answered: 409``: a restock past the bound) was answered as refused: redriving it
    would make it take effect after all.
    """
    return (
        letter.get("original_kind") != "truncated"
        and not letter.get("key_truncated")
        and not str(letter.get("source_topic", "")).endswith(".dlq")
        and letter.get("answered") != 409
    )


def _text_field(value: Any, name: str) -> str | None:
    """``value[name]`` when ``value`` is an object and that field a non-empty string of at most
    :data:`MAX_ID_CHARS` characters (a longer one stays in the original only)."""
    field = value.get(name) if isinstance(value, dict) else None
    return field if isinstance(field, str) and 0 < len(field) <= MAX_ID_CHARS else None


def _key_text(key: bytes | None) -> tuple[str | None, bool]:
    """The message key as a letter keeps it, and whether it is kept whole (UTF-8, not too long).

    A key that is not UTF-8 or longer than :data:`MAX_KEY_CHARS` is kept readable (invalid
    bytes replaced, a prefix), but not whole: a redrive would send it under another key.
    """
    if key is None:
        return None, True
    try:
        text, whole = key.decode("utf-8"), True
    except UnicodeDecodeError:
        text, whole = key.decode("utf-8", errors="replace"), False
    if len(text) > MAX_KEY_CHARS:
        return text[:MAX_KEY_CHARS], False
    return text, whole
