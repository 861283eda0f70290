"""Every Kafka topic of the app; each input topic has its dead-letter topic.

Topic names are ``{app_id}.{name}``. All have ``settings.partitions`` partitions,
so a key lands on the same partition number in every topic and table.
"""

from __future__ import annotations

from faust.types import TopicT

from app.domain.common import ANALYTICS, INVENTORY, NOTIFICATIONS, ORDERS, PAYMENTS, USERS
from app.main import app, settings


def _topic(name: str) -> TopicT:
    return app.topic(
        f"{settings.app_id}.{name}",
        partitions=settings.partitions,
        replicas=settings.replication_factor,
        internal=True,
        key_serializer="raw",
        value_serializer="orjson",
    )


orders_topic = _topic(ORDERS)
inventory_topic = _topic(INVENTORY)
payments_topic = _topic(PAYMENTS)
notifications_topic = _topic(NOTIFICATIONS)
analytics_topic = _topic(ANALYTICS)
users_topic = _topic(USERS)

BY_NAME: dict[str, TopicT] = {
    ORDERS: orders_topic,
    INVENTORY: inventory_topic,
    PAYMENTS: payments_topic,
    NOTIFICATIONS: notifications_topic,
    ANALYTICS: analytics_topic,
    USERS: users_topic,
}

DEAD_LETTERS: dict[str, TopicT] = {name: _topic(f"{name}.dlq") for name in BY_NAME}

#: Kafka topic name -> logical name, for dead letters and redrive.
LOGICAL = {t.get_topic_name(): name for name, t in BY_NAME.items()}


def kafka_name(logical: str) -> str:
    """Return the Kafka topic name of a logical topic."""
    return BY_NAME[logical].get_topic_name()
