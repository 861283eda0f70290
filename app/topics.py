"""Every Kafka topic of the app, by logical name; each input topic has its dead-letter topic.

Topic names are ``{app_id}.{name}`` (dead letters: ``{app_id}.{name}.dlq``). All have
``settings.partitions`` partitions, so a key lands on the same partition number in every
topic and store. The engine (:mod:`app.engine`) consumes them; the HTTP edge produces to
them with :func:`produce`.
"""

from __future__ import annotations

from app.main import engine, settings
from schemas.catalogue import TOPICS as NAMES

#: Logical name -> Kafka topic name.
BY_NAME: dict[str, str] = {name: f"{settings.app_id}.{name}" for name in NAMES}
#: Logical name of a stage topic -> its dead-letter topic.
DEAD_LETTERS: dict[str, str] = {name: f"{settings.app_id}.{name}.dlq" for name in NAMES}
#: Kafka topic name -> logical name, for dead letters and redrive.
LOGICAL = {topic: name for name, topic in BY_NAME.items()}


def kafka_name(logical: str) -> str:
    """Return the Kafka topic name of a logical topic."""
    return BY_NAME[logical]


async def produce(logical: str, key: str, value: bytes) -> None:
    """Send one record to a logical topic (or ``<name>.dlq``) and wait until the broker has it."""
    await engine.produce(logical, key, value)
