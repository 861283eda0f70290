"""The orjson codec, registered once with Faust under the name ``orjson``."""

from __future__ import annotations

from typing import Any

import orjson
from faust.serializers import codecs

CODEC_NAME = "orjson"


class Undecodable:
    """A message body that is not valid JSON; kept whole so it can be dead-lettered."""

    __slots__ = ("error", "raw")

    def __init__(self, raw: bytes, error: str) -> None:
        self.raw = raw
        self.error = error

    def __repr__(self) -> str:
        return f"Undecodable({len(self.raw)} bytes: {self.error})"


class OrjsonCodec(codecs.Codec):
    """orjson both ways; undecodable input becomes an :class:`Undecodable` instead of an error.

    Faust drops a message whose value fails to decode after logging it; returning a
    marker lets the agent dead-letter it with its topic, partition and offset.
    """

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError as exc:
            return Undecodable(bytes(s), f"invalid JSON: {exc}")


def register() -> None:
    """Register the codec (idempotent)."""
    if CODEC_NAME not in codecs.codecs:
        codecs.register(CODEC_NAME, OrjsonCodec())


def dumps(obj: Any) -> bytes:
    """Serialize with orjson."""
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    """Deserialize with orjson (raises on bad input)."""
    return orjson.loads(data)
