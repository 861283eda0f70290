"""Fixes for faust-streaming 0.15 bugs that lose or corrupt state after a crash or a rebalance.

Each is a small patch installed once at import of ``app.main``; each names the
symptom it fixes. Our own guarantees (``app.processing``) assume offsets commit only
after the effects they cover are durable, and that recovery reads the whole changelog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

from faust.types import TP

log = logging.getLogger("orderstream.faust_fixes")


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


#: How long a skipped message may stay unprocessed before its partition is read again from it.
REWIND_AFTER = 3.0


def _remember_skipped(consumer: Any, tp: Any, offset: int) -> None:
    """Note the lowest offset of ``tp`` the stream never processed, and since when (for :func:`rewind_skipped`)."""
    skipped = consumer.__dict__.setdefault("orderstream_skipped", {})
    lowest, since = skipped.get(tp, (offset, time.monotonic()))
    skipped[tp] = (min(lowest, offset), since)


def _ack_only_processed(original: Any) -> Any:
    def ack(self: Any, message: Any) -> bool:
        """Ack a message only if the stream processed it; remember the ones it skipped.

        faust 0.15 *acks* the messages a stream skips because they were fetched before a
        rebalance (stale generation, or flow stopped), so their offsets can commit
        although they were never processed: orders placed during a rebalance were lost.
        Unacked, they hold the commit back; usually the rebalance's seek to the committed
        offsets reads them again, and :func:`rewind_skipped` covers the rest.
        """
        app = self.app
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            _remember_skipped(self, message.tp, message.offset)
            return False
        return bool(original(self, message))

    return ack


def _holes_are_not_gaps(original: Any) -> Any:
    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        """Under at-least-once, a jump in the fetched offsets is a hole, not a gap to commit over.

        faust fills such jumps in as if they were transaction markers or compacted
        records, so the commit moves past them; under at-least-once (no markers, input
        topics not compacted) the missing offsets are messages the stream never got:
        ``order.placed`` messages were lost after rebalances. They hold the commit back
        instead and :func:`rewind_skipped` reads the partition again from the first one.
        Under exactly-once transaction markers do make gaps, so faust's filling stays.
        """
        if self.in_transaction:
            await original(self, tp, offset_from, offset_to)
            return
        committed = self._committed_offset.get(tp)
        if committed is not None:
            offset_from = max(offset_from, committed)
        if offset_from >= offset_to:
            return
        _remember_skipped(self, tp, offset_from)

    return _add_gap


async def rewind_skipped(app: Any) -> None:
    """Read a partition again from a message the stream skipped and nobody processed since."""
    consumer = app.consumer
    skipped: dict[Any, tuple[int, float]] = consumer.__dict__.get("orderstream_skipped") or {}
    if not skipped or app.rebalancing or not app.flow_control.is_active():
        return
    assigned = consumer.assignment()
    now = time.monotonic()
    for tp, (offset, since) in list(skipped.items()):
        if now - since < REWIND_AFTER:
            continue
        del skipped[tp]
        committed = consumer._committed_offset.get(tp)
        if tp not in assigned or (committed is not None and offset < committed):
            continue  # no longer ours, or read again and committed since
        if offset in consumer._acked_index.get(tp, ()):
            continue  # read again and processed since
        log.warning("re-reading %s from offset %s: the stream never processed it", tp, offset)
        await consumer.seek(tp, offset)


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
    consumer.Consumer.ack = _ack_only_processed(consumer.Consumer.ack)  # type: ignore[method-assign]
    consumer.Consumer._add_gap = _holes_are_not_gaps(consumer.Consumer._add_gap)  # type: ignore[method-assign]
    _original_send_pending = ProducerBuffer._send_pending
    ProducerBuffer._send_pending = _send_pending_counted  # type: ignore[method-assign]


_original_send_pending: Any = None
