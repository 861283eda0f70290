"""Shared adapters between the stage loop and Faust: keys, sending, dead letters."""

from __future__ import annotations

from typing import Any

from faust.types import EventT

from app import topics
from app.processing import Stage
from schemas.envelope import Envelope


def key_of(event: EventT) -> str:
    """Return the message key of ``event`` as text."""
    k = event.key
    if isinstance(k, bytes):
        return k.decode("utf-8", errors="replace")
    return "" if k is None else str(k)


async def send(topic: str, key: str, env: Envelope) -> Any:
    """Send one envelope to a logical topic under ``key``."""
    return await topics.BY_NAME[topic].send(key=key.encode(), value=env)


def dead_letter_sender(stage: Stage) -> Any:
    """Return a function that sends a dead letter to the stage's dead-letter topic."""
    topic = topics.DEAD_LETTERS[stage.source_topic]

    async def _send(env: Envelope) -> Any:
        return await topic.send(key=env["entity_id"].encode(), value=env)

    return _send
