"""Dead letters: keep every dead-lettered message listable and redrivable.

Consumes every stage topic's dead-letter topic (``{topic}.dlq``, key: dead-letter id):
``event.processing.failed`` (stored in ``letter/<id>``) and ``dead_letter.redrive`` (from
``POST /dlq/redrive`` or ``faust -A app dlq redrive``), which re-injects the original
message, with its original key, into its source topic once and marks the letter
redriven. Redriving is safe whatever the letter's age: every stage applies a message it
already applied as a no-op (entity state, or the command's id where only the id can tell).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from agents._wiring import send_raw
from app import metrics, tracing
from app.engine.dead_letters import redrivable
from app.engine.step import Step
from app.main import engine
from schemas.catalogue import TOPICS
from schemas.envelope import Envelope
from tables import DEAD_LETTERS as STORE

log = logging.getLogger("orderstream.dead_letters")
STAGE = "dead_letters"
SOURCES = TOPICS


def original_bytes(letter: dict[str, Any]) -> bytes:
    """Return the original message body exactly as it can be re-sent."""
    if letter.get("original_kind") == "text":
        return str(letter["original"]).encode("utf-8")
    return orjson.dumps(letter["original"])


def handle(step: Step, env: Envelope) -> None:
    """Store a dead letter, or carry out a redrive request."""
    dlq_id = env["entity_id"]
    key = f"letter/{dlq_id}"
    letter = step.get(STORE, key)
    if env["type"] == "event.processing.failed":
        if letter is None:
            step.put(
                STORE,
                key,
                {
                    **env["payload"],
                    "id": dlq_id,
                    "dead_lettered_at": env["timestamp"],
                    "status": "dead",
                    "redriven_at": None,
                    # The failed message's trace (the letter carries it on): its redrive continues it.
                    "traceparent": tracing.current_traceparent(),
                },
            )
        return
    if letter is None or letter["status"] != "dead":
        return
    if not redrivable(letter):
        log.warning(
            "dead letter %s cannot be redriven (%s; the message is at %s[%s]@%s)",
            dlq_id,
            _why_not_redrivable(letter),
            letter["source_topic"],
            letter["partition"],
            letter["offset"],
        )
        return
    source = engine.topics.get(letter["source_topic"])
    if source is None:
        log.warning("dead letter %s names an unknown source topic %s: not redriven", dlq_id, letter["source_topic"])
        return
    send_raw(step, source, letter.get("key"), original_bytes(letter), letter.get("traceparent"))
    step.put(STORE, key, {**letter, "status": "redriven", "redriven_at": env["timestamp"]})
    metrics.REDRIVEN.inc()
    log.info("redrove dead letter %s to %s", dlq_id, letter["source_topic"])


def _why_not_redrivable(letter: dict[str, Any]) -> str:
    if letter.get("answered") == 409:
        return "its command was answered 409 to the client that sent it"
    if letter.get("original_kind") == "truncated":
        return f"it kept only a prefix of its {letter.get('original_bytes')}-byte original"
    if letter.get("key_truncated"):
        return "its key was too long or not UTF-8 and is not kept whole"
    return "an unreadable message on a dead-letter topic"


for _source in SOURCES:
    engine.route(STAGE, f"{_source}.dlq", {"event.processing.failed", "dead_letter.redrive"}, handle)
