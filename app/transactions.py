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

from collections.abc import Awaitable, Mapping

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


def install() -> None:
    """Make the aiokafka transport build our transaction manager."""
    from faust.transport.drivers import aiokafka

    aiokafka.Transport.TransactionManager = SourcePartitionTransactionManager  # type: ignore[misc]
