"""Bring a task's database to the end of its changelogs, trusting local state only when it is provably ours.

Each store partition's checkpoint says which cluster and changelog topic it was written
against and the changelog offset it has applied. Kafka Streams' rule: local state is
kept only when that offset lies within what the changelog holds now; anything else —
another cluster (a fresh broker under an old data directory), another topic (another
app id), an offset past the changelog's end (the topic was deleted and recreated, or
the state is a zombie's) or before its start (retention or truncation removed what it
was built on), or records without a checkpoint — is discarded and rebuilt from the
changelog, with one log line saying which partition and why.

The changelogs are read ``read_committed`` after the task's transactional producer
fenced the previous owner, so only committed transactions are restored.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.engine.store import LAYOUT, PartitionDB, checkpoint, decode_record
from app.engine.topic_ids import topic_ids

if TYPE_CHECKING:
    from pathlib import Path

    from app.engine.runtime import Engine, Task

log = logging.getLogger("orderstream.recovery")

#: How :func:`verdict` starts a reason that says the changelog no longer holds the local state.
CHANGELOG_LOST = ("its changelog was created again", "it is ahead of its changelog", "its changelog no longer holds")

#: What folding a value of the wrong shape raises (anything else, a full memory, is not the record's fault).
UNFOLDABLE = (KeyError, TypeError, ValueError, AttributeError, IndexError)

#: How long a restore may go without progress before it is retried from scratch.
STALL_TIMEOUT = 60.0


def verdict(
    cp: dict[str, Any] | None,
    has_records: bool,
    *,
    cluster: str,
    topic: str,
    start: int,
    end: int,
    topic_id: str | None = None,
    partition: int | None = None,
) -> str:
    """Why a store partition's local state cannot be trusted, or ``""`` when it can."""
    if cp is None:
        return "it has records but no checkpoint" if has_records else ""
    if cp.get("cluster") != cluster:
        return f"it was written against cluster {cp.get('cluster')!r}, this is {cluster!r}"
    if cp.get("layout", 1) != LAYOUT:
        return f"it was written in local layout {cp.get('layout', 1)}, this worker keeps layout {LAYOUT}"
    if cp.get("topic") != topic:
        return f"it was written from changelog {cp.get('topic')!r}"
    if partition is not None and cp.get("partition", partition) != partition:
        # A partition's database under another's name (a directory copied or renamed by hand):
        # its offsets may well lie within this partition's changelog, and would be trusted.
        return f"it was written from partition {cp['partition']} of its changelog, not {partition}"
    if topic_id and cp.get("topic_id") and cp["topic_id"] != topic_id:
        # Deleted and created again under its name: offsets start at 0 again, and once the new
        # copy grows past the checkpoint no offset check can tell the copies apart.
        return f"its changelog was created again (topic id {topic_id}; it was written against {cp['topic_id']})"
    offset = int(cp.get("offset", -1))
    if offset > end:
        return f"it is ahead of its changelog (checkpoint {offset}, changelog ends at {end})"
    if offset < start:
        return f"its changelog no longer holds what it was built on (checkpoint {offset}, changelog starts at {start})"
    return ""


async def restore(engine: Engine, tasks: list[Task]) -> None:
    """Check and restore every store partition of ``tasks``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=engine.bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        await _restore(engine, consumer, tasks)
    finally:
        await consumer.stop()


async def _restore(engine: Engine, consumer: AIOKafkaConsumer, tasks: list[Task]) -> None:
    by_tp: dict[TopicPartition, tuple[PartitionDB, str]] = {}
    for task in tasks:
        for definition in engine.stores.values():
            by_tp[TopicPartition(definition.changelog, task.partition)] = (task.step.db, definition.name)
    tps = list(by_tp)
    consumer.assign(tps)
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    ids = await topic_ids(consumer._client, sorted({tp.topic for tp in tps}))
    engine.topic_ids.update(ids)  # the commits' checkpoints name them from now on
    todo: dict[TopicPartition, int] = {}
    copies: dict[int, Path | None] = {}  # id(database) -> the copy kept before its first discard

    def checkpoint_at(tp: TopicPartition, offset: int) -> dict[str, Any]:
        return checkpoint(offset, engine.cluster_id, tp.topic, ids.get(tp.topic), tp.partition)

    for tp, (db, store) in by_tp.items():
        cp = db.checkpoint(store)
        reason = verdict(
            cp,
            db.has_records(store),
            cluster=engine.cluster_id,
            topic=tp.topic,
            start=starts[tp],
            end=ends[tp],
            topic_id=ids.get(tp.topic),
            partition=tp.partition,
        )
        if reason:
            kept = ""
            if reason.startswith(CHANGELOG_LOST) and db.has_records(store):
                # The changelog lost what these records hold (deleted and created again, truncated,
                # past retention): they may be the last copy of this state. One copy of the
                # database, whatever else this recovery discards from it. (Another cluster, app or
                # layout: the state is still where it came from, and nothing is copied.)
                if id(db) not in copies:
                    copies[id(db)] = db.keep_copy()
                if copies[id(db)] is not None:
                    kept = f"; a copy of the database as it was is kept in {copies[id(db)]}"
            log.error(
                "discarding local %s partition %s and rebuilding it from %s: %s%s",
                store,
                tp.partition,
                tp.topic,
                reason,
                kept,
            )
            db.wipe_store(store)
            cp = None
        elif tp.topic not in ids and cp and cp.get("topic_id"):
            # The ids could not be read this time: keep the checkpoint's, or the next commits'
            # checkpoints would drop the only record of which copy of the topic this state is from.
            ids[tp.topic] = engine.topic_ids.setdefault(tp.topic, str(cp["topic_id"]))
        position = int(cp["offset"]) if cp else starts[tp]
        if position < ends[tp]:
            todo[tp] = position
            consumer.seek(tp, position)
        elif cp is None and ends[tp] > 0:
            # Nothing to read, but record that this (empty) state matches the changelog.
            db.apply({}, {store: checkpoint_at(tp, ends[tp])})
    if not todo:
        return
    consumer.pause(*[tp for tp in tps if tp not in todo])
    began = time.monotonic()
    total = 0
    last_progress = time.monotonic()
    while todo:
        batch = await consumer.getmany(*todo.keys(), timeout_ms=500, max_records=5000)
        for tp, records in batch.items():
            db, store = by_tp[tp]
            writes: dict[str, tuple[Any, bytes | None]] = {}
            offsets: dict[str, int] = {}
            for r in records:
                try:
                    key = r.key.decode()
                    writes[key] = (None if r.value is None else decode_record(r.value), r.value)
                    offsets[key] = r.offset
                except Exception as exc:  # noqa: BLE001 - not one of ours (written by hand): never a stuck restore
                    _skip(tp, r.offset, exc)
            position = await consumer.position(tp)
            cp = checkpoint_at(tp, position)
            _apply(db, store, writes, cp, tp, offsets)
            total += len(records)
            last_progress = time.monotonic()
        for tp in list(todo):
            position = await consumer.position(tp)
            if position >= ends[tp]:
                db, store = by_tp[tp]
                db.apply({}, {store: checkpoint_at(tp, position)})
                del todo[tp]
                consumer.pause(tp)
        if todo and time.monotonic() - last_progress > STALL_TIMEOUT:
            raise RuntimeError(f"restoring {sorted(map(str, todo))} made no progress for {STALL_TIMEOUT:.0f} s")
    log.info(
        "restored %d changelog records for partitions %s in %.2f s",
        total,
        sorted({t.partition for t in tasks}),
        time.monotonic() - began,
    )


def _skip(tp: TopicPartition, offset: int, error: BaseException) -> None:
    log.error(
        "%s[%s]@%s: a changelog record this app cannot have written is skipped (its key keeps the value before it): %s",
        tp.topic,
        tp.partition,
        offset,
        f"{type(error).__name__}: {error}"[:300],
    )


def _apply(
    db: PartitionDB,
    store: str,
    writes: dict[str, tuple[Any, bytes | None]],
    cp: dict[str, Any],
    tp: TopicPartition,
    offsets: dict[str, int],
) -> None:
    """Apply restored records; one whose value the store's indexer cannot read is skipped, alone.

    Every changelog record is one the stages wrote, unless someone wrote on the topic by hand:
    such a record must not stop the restore (the partition would never be served again, on
    this worker or on any other that takes it over).
    """
    try:
        db.apply({store: writes}, {store: cp})
        return
    except UNFOLDABLE:  # one record of a shape the indexer cannot fold: find it, keep the rest
        pass
    for key, write in writes.items():
        try:
            db.apply({store: {key: write}}, {})
        except UNFOLDABLE as exc:
            _skip(tp, offsets.get(key, -1), exc)
    db.apply({}, {store: cp})
