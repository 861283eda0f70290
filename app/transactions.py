"""Exactly-once done per source partition, as Kafka Streams does it.

faust-streaming 0.15 picks the transactional producer by the *destination*
partition of each send (``{app id}-{group}-{destination partition}``) but commits
offsets through the producer of the *source* partition. A send to a partition that
another worker owns then fails with ``No transaction producer found``, and a send
to one this worker owns lands in another partition's transaction. We send through
the producer of the partition whose event is being processed, so outputs, changelog
writes and the input offset commit in one transaction; sends made outside stream
processing (HTTP edge, timers, finished gateway calls) go through the plain
idempotent producer and carry their own dedupe keys. Table (changelog) writes are
flushed before each transaction commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, cast

from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.types import TP, RecordMetadata
from faust.types.tuples import HeadersArg


class SourcePartitionTransactionManager(TransactionManager):
    """Send within the transaction of the source partition of the current event."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        """Route to the current source partition's transactional producer, else the plain one."""
        event = current_event()
        tid: str | None = None
        if event is not None:
            tp: TP = event.message.tp
            group = self.app.assignor.group_for_topic(tp.topic)
            tid = f"{self.app.conf.id}-{group}-{tp.partition}"
        return await self.producer.send(topic, key, value, partition, timestamp, headers, transactional_id=tid)

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        """Make buffered table writes durable, then commit the transactions.

        Faust flushes the producer buffer before an at-least-once commit but not before a
        transactional one, so a crash could lose table writes whose outputs and offsets
        were committed. Table writes stay outside the transactions (faust 0.15's
        recovery mishandles transactional changelogs); written before the commit, a
        crash leaves state at most ahead of the outputs, and the redelivered input then
        re-sends its stored outputs.
        """
        await self.app.producer.flush()
        return await super().commit(offsets, start_new_transaction=start_new_transaction)


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


def install() -> None:
    """Make the aiokafka transport build our transaction manager, flush fully and ask real highwaters."""
    global _original_send_pending
    from faust.transport.drivers import aiokafka
    from faust.transport.producer import ProducerBuffer

    aiokafka.Transport.TransactionManager = SourcePartitionTransactionManager  # type: ignore[misc]
    aiokafka.AIOKafkaConsumerThread._highwaters = _end_offsets  # type: ignore[method-assign]
    aiokafka.Producer.flush = _flush  # type: ignore[method-assign]
    if _original_send_pending is None:
        _original_send_pending = ProducerBuffer._send_pending
        ProducerBuffer._send_pending = _send_pending_counted  # type: ignore[method-assign]


_original_send_pending: Any = None
