"""Dead letters: keep every dead-lettered message listable and redrivable.

Consumes every stage's dead-letter topic (key: dead-letter id):
``event.processing.failed`` (stored in ``dead_letter_to_state``) and
``dead_letter.redrive`` (from ``POST /dlq/redrive`` or the CLI), which re-injects
the original message, with its original key, into its source topic once and marks
the dead letter redriven.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import StreamT

from app import codec, metrics
from app.main import app
from app.topics import BY_NAME as TOPICS
from app.topics import DEAD_LETTERS, LOGICAL
from schemas.envelope import EnvelopeError, validate
from tables import dead_letter_to_state

log = logging.getLogger("orderstream.dead_letters")

dead_letter_topics = app.topic(*(t.get_topic_name() for t in DEAD_LETTERS.values()), key_serializer="raw")


def original_bytes(letter: dict[str, Any]) -> bytes:
    """Return the original message body exactly as it can be re-sent."""
    if letter.get("original_kind") == "text":
        return str(letter["original"]).encode("utf-8")
    return codec.dumps(letter["original"])


def redrivable(letter: dict[str, Any]) -> bool:
    """Whether the letter kept its whole original (an oversized one keeps a prefix only)."""
    return letter.get("original_kind") != "truncated"


@app.agent(dead_letter_topics)
async def keep_dead_letters(stream: StreamT[Any]) -> None:
    """Store dead letters and carry out redrive requests."""
    async for event in stream.events():
        try:
            env = validate(event.value)
        except EnvelopeError as exc:
            log.error("unreadable message on dead-letter topic %s: %s", event.message.topic, exc)
            continue
        dlq_id = env["entity_id"]
        if env["type"] == "event.processing.failed":
            if dead_letter_to_state.get(dlq_id) is None:
                dead_letter_to_state[dlq_id] = {
                    **env["payload"],
                    "id": dlq_id,
                    "dead_lettered_at": env["timestamp"],
                    "status": "dead",
                    "redriven_at": None,
                }
        elif env["type"] == "dead_letter.redrive":
            letter = dead_letter_to_state.get(dlq_id)
            if letter is None or letter["status"] != "dead":
                continue
            if not redrivable(letter):
                log.warning(
                    "dead letter %s kept only a prefix of its %s-byte original: not redriven (it is at %s[%s]@%s)",
                    dlq_id,
                    letter.get("original_bytes"),
                    letter["source_topic"],
                    letter["partition"],
                    letter["offset"],
                )
                continue
            source = TOPICS[LOGICAL[letter["source_topic"]]]
            key = letter.get("key")
            await source.send(key=key.encode() if key else None, value=original_bytes(letter), value_serializer="raw")
            dead_letter_to_state[dlq_id] = {**letter, "status": "redriven", "redriven_at": env["timestamp"]}
            metrics.REDRIVEN.inc()
            log.info("redrove dead letter %s to %s", dlq_id, letter["source_topic"])
