"""Fixes for faust-streaming 0.15 bugs that lose or corrupt state after a crash or a rebalance.

Each is a small patch installed once at import of ``app.main``; each names the
symptom it fixes. Our own guarantees (``app.processing``) assume offsets commit only
after the effects they cover are durable, and that recovery reads the whole changelog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from faust.types import TP


async def _end_offsets(self: Any, partitions: list[TP]) -> Mapping[TP, int]:
    """Changelog end offsets asked of the broker, in both guarantees.

    Under exactly-once faust 0.15 reads the consumer's *cached* last stable offset,
    which is ``None`` for a partition nothing was fetched from yet; recovery turns that
    into "empty changelog" and skips it, so a worker that takes over a partition (or
    restarts with a wiped data directory) serves empty tables, and one that kept its
    data crashes with ``ConsistencyError`` (persisted offset > highwater -1). A
    ``read_committed`` consumer's ``end_offsets`` is the last stable offset, asked of
    the broker.
    """
    return cast(Mapping[TP, int], await self._ensure_consumer().end_offsets(partitions))


async def _send_pending_counted(self: Any, fut: Any) -> None:
    """Hand one buffered message to the producer, counted while it is in hand."""
    self.orderstream_in_hand = getattr(self, "orderstream_in_hand", 0) + 1
    try:
        await _original_send_pending(self, fut)
    finally:
        self.orderstream_in_hand -= 1


async def drain(buffer: Any) -> None:
    """Wait until faust's producer buffer is empty and nothing is being handed over.

    ``ProducerBuffer.flush`` gives up after 0.1 s without progress and does not see the
    message its sender task is handing to aiokafka, so "flushed" table writes could
    still be in the buffer when the offsets commit; a crash then lost state whose
    inputs were already committed (orders lost after a SIGKILL).
    """
    while buffer.size or getattr(buffer, "orderstream_in_hand", 0):
        if buffer.size:
            await buffer.flush()
        else:
            await asyncio.sleep(0.0005)


async def _flush(self: Any) -> None:
    """faust's producer flush, made complete: the buffer, then every aiokafka producer."""
    await drain(self.buffer)
    if self._producer is not None:
        await self._producer.flush()
    for transaction_producer in self._transaction_producers.values():
        await transaction_producer.flush()


_installed = False


def install() -> None:
    """Install every fix once."""
    global _installed, _original_send_pending
    if _installed:
        return
    _installed = True
    from faust.transport.drivers import aiokafka
    from faust.transport.producer import ProducerBuffer

    aiokafka.AIOKafkaConsumerThread._highwaters = _end_offsets  # type: ignore[method-assign]
    aiokafka.Producer.flush = _flush  # type: ignore[method-assign]
    _original_send_pending = ProducerBuffer._send_pending
    ProducerBuffer._send_pending = _send_pending_counted  # type: ignore[method-assign]


_original_send_pending: Any = None
