"""Fixes for faust-streaming 0.15 bugs that lose or corrupt state after a crash or a rebalance.

Each is a small patch installed once at import of ``app.main``; each names the
symptom it fixes. Our own guarantees (``app.processing``) assume offsets commit only
after the effects they cover are durable, and that recovery reads the whole changelog.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
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


def _ack_only_processed(original: Any) -> Any:
    def ack(self: Any, message: Any) -> bool:
        """Ack a message only if the stream processed it; remember the ones it skipped.

        faust 0.15 *acks* the messages a stream skips because they were fetched before a
        rebalance (stale generation, or flow stopped), so their offsets can commit
        although they were never processed: orders placed during a rebalance were lost.
        Unacked, they hold the commit back; usually the rebalance's seek to the committed
        offsets reads them again, and :func:`rewind_stuck` covers the rest.
        """
        app = self.app
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            return False
        return bool(original(self, message))

    return ack


#: How long the commit may stay held by an offset the stream went past before it is read again.
REWIND_AFTER = 3.0

#: Offsets the fetcher passed over on purpose, per partition: ``[start, end)`` ranges of
#: transaction markers and aborted records (``read_committed`` skips both). Written by the
#: consumer thread, read by the commit; guarded by ``_skipped_lock``.
_skipped: dict[Any, list[tuple[int, int]]] = {}
_skipped_lock = threading.Lock()


def _record_skip(tp: Any, start: int, end: int) -> None:
    with _skipped_lock:
        _skipped.setdefault(TP(tp.topic, tp.partition), []).append((start, end))


def _skips_recorded(original: Any) -> Any:
    def _unpack_records(self: Any) -> Iterator[Any]:
        """aiokafka's record unpacking, noting every offset range it passes over without yielding.

        Within a fetch the only offsets aiokafka skips are transaction markers and aborted
        records; every other missing offset is a message the stream never saw.
        """
        expected = self.next_fetch_offset
        for record in original(self):
            if record.offset > expected:
                _record_skip(self._tp, expected, record.offset)
            expected = max(expected, record.offset + 1)
            yield record
        if self.next_fetch_offset > expected:
            _record_skip(self._tp, expected, self.next_fetch_offset)

    return _unpack_records


def commit_position(committed: int | None, acked: list[int], skipped: Iterable[tuple[int, int]]) -> int | None:
    """The offset a partition may commit: the first one neither processed nor passed over on purpose.

    ``committed`` is the partition's committed offset (the next one to read), ``acked``
    the processed offsets in ascending order, ``skipped`` the ``[start, end)`` ranges the
    fetcher passed over. ``None`` when nothing was processed.
    """
    if not acked:
        return None
    position = acked[0] if committed is None else committed
    ranges = sorted(r for r in skipped if r[1] > position)
    i = j = 0
    while True:
        while i < len(acked) and acked[i] < position:
            i += 1
        if i < len(acked) and acked[i] == position:
            position += 1
            continue
        while j < len(ranges) and ranges[j][1] <= position:
            j += 1
        if j < len(ranges) and ranges[j][0] <= position:
            position = ranges[j][1]
            continue
        return position


#: Per partition, the position the last :func:`_new_offset` handed to a commit, and in which
#: consumer generation: the committed offset until that commit completes (it can take seconds).
_handed_over: dict[Any, tuple[int, int]] = {}


def _position(consumer: Any, tp: Any) -> int | None:
    acked = consumer._acked[tp]
    acked.sort()
    with _skipped_lock:
        skipped = list(_skipped.get(tp, ()))
    committed = consumer._committed_offset[tp]
    generation, handed = _handed_over.get(tp, (None, None))
    if handed is not None and generation == consumer.app.consumer_generation_id:
        committed = handed if committed is None else max(committed, handed)
    return commit_position(committed, acked, skipped)


def _new_offset(self: Any, tp: Any) -> int | None:
    """The offset to commit for ``tp``: contiguous processed offsets, over markers only.

    faust 0.15 commits over every "gap" in the fetched offsets as if it were a
    transaction marker, and over the message *at* the committed offset when the one
    after it is processed first; both moved the commit past messages the stream never
    processed (``order.placed`` / ``inventory.reserve`` lost after a rebalance). Here
    the commit goes only over processed offsets and the ranges the fetcher itself
    passed over; anything else holds it, and :func:`rewind_stuck` reads the partition
    again from there.
    """
    position = _position(self, tp)
    committed = self._committed_offset[tp]
    if position is None or (committed is not None and position <= committed):
        return None
    _handed_over[tp] = (self.app.consumer_generation_id, position)
    acked = self._acked[tp]
    done = [offset for offset in acked if offset < position]
    acked[: len(done)] = []
    self._acked_index[tp].difference_update(done)
    with _skipped_lock:
        if tp in _skipped:
            _skipped[tp] = [r for r in _skipped[tp] if r[1] > position]
    return position


async def _no_gaps(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    """faust's gap bookkeeping is replaced by :func:`_new_offset`'s own."""


_stuck_since: dict[Any, tuple[int, float]] = {}


async def rewind_stuck(app: Any) -> None:
    """Read a partition again from an offset the stream went past without processing it.

    Such an offset holds the commit (:func:`_new_offset`); usually the next rebalance's
    seek reads it again. If the stream has processed later offsets for
    :data:`REWIND_AFTER` seconds and it is still missing, seek back to it.
    """
    consumer = app.consumer
    if app.rebalancing or not app.flow_control.is_active():
        _stuck_since.clear()
        return
    now = time.monotonic()
    for tp in consumer.assignment():
        acked = consumer._acked.get(tp)  # .get: indexing would add a faust TP key the commit cannot take
        position = _position(consumer, tp) if acked else None
        if position is None or not acked or acked[-1] < position:
            _stuck_since.pop(tp, None)
            continue
        held, since = _stuck_since.setdefault(tp, (position, now))
        if held != position:
            _stuck_since[tp] = (position, now)
        elif now - since >= REWIND_AFTER:
            del _stuck_since[tp]
            log.warning("re-reading %s from offset %s: the stream went past it without processing it", tp, position)
            await consumer.seek(tp, position)


_installed = False


def install() -> None:
    """Install every fix once."""
    global _installed, _original_send_pending
    if _installed:
        return
    _installed = True
    from aiokafka.consumer import fetcher
    from faust.transport import consumer
    from faust.transport.drivers import aiokafka
    from faust.transport.producer import ProducerBuffer

    aiokafka.AIOKafkaConsumerThread._highwaters = _end_offsets  # type: ignore[method-assign]
    aiokafka.Producer.flush = _flush  # type: ignore[method-assign]
    consumer.Consumer.ack = _ack_only_processed(consumer.Consumer.ack)  # type: ignore[method-assign]
    consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    consumer.Consumer._add_gap = _no_gaps  # type: ignore[method-assign]
    fetcher.PartitionRecords._unpack_records = _skips_recorded(fetcher.PartitionRecords._unpack_records)
    _original_send_pending = ProducerBuffer._send_pending
    ProducerBuffer._send_pending = _send_pending_counted  # type: ignore[method-assign]


_original_send_pending: Any = None
