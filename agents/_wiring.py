"""What every stage's adapter shares: turning a decision's emits into records of the step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from app import tracing
from app.domain.common import Emit
from app.engine.step import Step
from app.main import engine
from schemas.envelope import Envelope, derived_id, make
from schemas.registry import current_version

#: One message to send: (logical topic, key, envelope).
Out = tuple[str, str, Envelope]


def envelopes(emits: Iterable[Emit], cause: Envelope, *, stage: str = "") -> list[Out]:
    """Wrap a decision's emits in envelopes whose ids derive from the cause (the same on every replay).

    A stage that shares its input with others (``order.confirmed`` feeds notifications and
    analytics) names itself, so their outputs' ids differ.
    """
    out: list[Out] = []
    correlation = cause.get("correlation_id") or cause["entity_id"]
    base = f"{cause['id']}/{stage}" if stage else cause["id"]
    for i, e in enumerate(emits):
        env = make(
            e.type,
            e.entity_type,
            e.entity_id,
            e.payload,
            correlation_id=correlation,
            causation_id=e.cause or cause["id"],
            event_id=derived_id(base, i),
            version=current_version(e.type),
        )
        out.append((e.topic, e.key, env))
    return out


def send(step: Step, outs: Iterable[Out]) -> None:
    """Queue the step's outputs: each envelope to its logical topic, under its key."""
    for topic, key, env in outs:
        headers: list[tuple[str, bytes]] = []
        tracing.inject(headers)  # W3C traceparent of the handling span (nothing when tracing is off)
        step.send(f"{engine.app_id}.{topic}", key.encode(), orjson.dumps(env), headers)


def send_raw(step: Step, topic: str, key: str | None, value: bytes, traceparent: str | None = None) -> None:
    """Queue bytes exactly as given (a redriven original) to a logical topic.

    ``traceparent``: the trace it continues (the original's); else the handling span's.
    """
    headers = tracing.headers_of(traceparent)
    if not headers:
        tracing.inject(headers)
    step.send(f"{engine.app_id}.{topic}", key.encode() if key is not None else None, value, headers)


def order_id_of(env: Envelope) -> str:
    """The order an envelope is about: its payload's ``order_id``, else its correlation id."""
    payload: Any = env.get("payload") or {}
    value = payload.get("order_id")
    return str(value) if value else str(env.get("correlation_id") or env["entity_id"])


class WrongPartition(ValueError):
    """A message on a partition its entity's key does not hash to."""


def on_partition(step: Step, key: str) -> str:
    """``key``, when this step's partition is the one it hashes to; else the message is dead-lettered.

    The entity's state lives on the partition its key hashes to (Kafka's default
    partitioner), and every answer about it goes there: handled on another partition (a
    producer with no key, another key or another partitioner), it would make state there
    that nothing ever answers, e.g. a reservation never released.
    """
    expected = engine.partition_for(key)
    if expected != step.partition:
        raise WrongPartition(
            f"{key!r} belongs to partition {expected}, not {step.partition}: "
            "produce it keyed by it, with Kafka's default partitioner"
        )
    return key
