"""Fixes for faust-streaming 0.15 bugs that lose or corrupt state after a crash or a rebalance.

Each is a small patch installed once at import of ``app.main``; each names the
symptom it fixes. Our own guarantees (``app.processing``) assume offsets commit only
after the effects they cover are durable, and that no message is skipped.
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


def _ack_only_processed(original: Any) -> Any:
    def ack(self: Any, message: Any) -> bool:
        """Ack a message only if the stream really processed it.

        faust 0.15 *acks* the messages a stream skips because they were fetched before a
        rebalance (stale generation, or flow control stopped), so their offsets commit
        although they were never processed: orders placed during a rebalance were lost.
        Left unacked, they are fetched again after the seek to the committed offset.
        """
        app = self.app
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            return False
        return bool(original(self, message))

    return ack


def _seek_forgets_acks(original: Any) -> Any:
    async def perform_seek(self: Any) -> None:
        """After seeking back to the committed offsets, forget acks and gaps beyond them.

        Everything from the committed offset on is fetched and processed again, so an
        ack or "gap" recorded before the rebalance would let a commit run ahead of
        messages not yet processed again.
        """
        await original(self)
        for tp in list(self._acked):
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
        self._gap.clear()

    return perform_seek


_installed = False


def install() -> None:
    """Install every fix once."""
    global _installed, _original_send_pending
    if _installed:
        return
    _installed = True
    from faust.transport import consumer
    from faust.transport.drivers import aiokafka
    from faust.transport.producer import ProducerBuffer

    aiokafka.AIOKafkaConsumerThread._highwaters = _end_offsets  # type: ignore[method-assign]
    aiokafka.Producer.flush = _flush  # type: ignore[method-assign]
    _original_send_pending = ProducerBuffer._send_pending
    ProducerBuffer._send_pending = _send_pending_counted  # type: ignore[method-assign]
    consumer.Consumer.ack = _ack_only_processed(consumer.Consumer.ack)  # type: ignore[method-assign]
    consumer.Consumer.perform_seek = _seek_forgets_acks(consumer.Consumer.perform_seek)  # type: ignore[method-assign]


_original_send_pending: Any = None
