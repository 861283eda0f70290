"""Kafka's topic ids (KIP-516): which copy of a topic a changelog checkpoint was written against.

A topic deleted and created again under the same name starts its offsets at 0 again; a
partition database checkpointed against the old copy would pass every other check once
the new copy grew past its checkpoint, and serve the old copy's state. The topic id, a
UUID the broker gives each topic when it is created, tells the copies apart.

aiokafka (0.14) speaks Metadata up to version 5, before topic ids; this module adds the
version 12 request and response (the flexible encoding aiokafka's protocol types
support) for one call at recovery. Brokers older than Kafka 2.8 have no topic ids: the
answer is empty and the checkpoints go without one, as before.
"""

from __future__ import annotations

import logging
import uuid
from io import BytesIO
from typing import Any

from aiokafka.errors import IncompatibleBrokerVersion
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    AbstractType,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

log = logging.getLogger("orderstream.recovery")

METADATA = 3
TOPIC_ID_VERSION = 12
_NO_ID = bytes(16)


class _Uuid(AbstractType[bytes]):
    """Kafka's UUID field: 16 bytes."""

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return value

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        value = data.read(16)
        if len(value) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        return value


class _MetadataResponseV12(Response):
    API_KEY = METADATA
    API_VERSION = TOPIC_ID_VERSION
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _MetadataRequestV12(RequestStruct):
    API_KEY = METADATA
    API_VERSION = TOPIC_ID_VERSION
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = _MetadataResponseV12
    SCHEMA = Schema(
        ("topics", CompactArray(("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields))),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _TopicIdsRequest(Request[_MetadataRequestV12]):
    API_KEY = METADATA

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def build(self, request_struct_class: type[_MetadataRequestV12]) -> _MetadataRequestV12:
        return request_struct_class([(_NO_ID, name, {}) for name in self.names], False, False, {})


async def topic_ids(client: Any, names: list[str]) -> dict[str, str]:
    """``{topic: its id}`` for the topics of ``names`` that exist; ``{}`` from a broker without topic ids.

    ``client``: a started aiokafka ``AIOKafkaClient`` (a consumer's or producer's ``_client``).
    """
    if not names:
        return {}
    try:  # the connection picks the version from the broker's ApiVersions answer
        response = await client.send(client.get_random_node(), _TopicIdsRequest(names))
    except (NotImplementedError, IncompatibleBrokerVersion):
        return {}  # a broker before Metadata v12 (Kafka 3.0): no topic ids to compare
    except Exception as exc:  # noqa: BLE001 - without ids the other checks still hold: never a reason not to recover
        log.warning("could not read the changelogs' topic ids: %r", exc)
        return {}
    return {
        name: str(uuid.UUID(bytes=topic_id))
        for error, name, topic_id, *_ in response.topics
        if error == 0 and topic_id != _NO_ID
    }
