"""The engine: every stage of a partition number as one task, batched steps, one transaction per commit.

One consumer per worker reads every input topic of the stages (group ``{app_id}.engine``,
:class:`~app.engine.assignor.TaskAssignor`: a member gets partition ``p`` of every topic).
Partition number ``p`` is a *task*: the stages' handlers for ``p``'s messages, partition
``p`` of every store (one RocksDB database, :mod:`app.engine.store`), and one
transactional producer (``{app_id}-task-{p}``).

A **step** handles everything buffered for a task in offset order: decode once per
message, run each stage's handler for the message's type (pure decisions; writes go
to an overlay, outputs to a list), dead-letter what fails. A **commit** (every
``commit_interval``; under exactly-once also at once when the input is idle, since the
outputs wait for it) sends one changelog record per
key the task changed since the last commit, adds the input offsets, and commits the
transaction; only then is the overlay written to RocksDB as one ``WriteBatch``
together with each changelog partition's new offset (the checkpoint).

Guarantees, both modes: a task's state, its changelogs and its input offsets move
together in one Kafka transaction, so state is always the state after the committed
inputs — a crash or a fenced zombie (a worker paused until its partitions moved) lands
nothing, and a replay starts from exactly the state it had. Under ``exactly_once`` the
outputs are in that transaction too (visible at commit); under ``at_least_once`` they go
out at once through a plain idempotent producer, so a replay after a crash can send
them again, with the same ids, and downstream handlers drop them by state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import time
import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError, KafkaError, KafkaTimeoutError, ProducerFenced
from aiokafka.structs import ConsumerRecord as Record  # topic, partition, offset, key, value, headers

from app import logs, metrics, tracing
from app.engine.assignor import TaskAssignor
from app.engine.partitioner import partition_of
from app.engine.step import Output, Step
from app.engine.store import (
    FLUSH_AFTER,
    Indexer,
    InUseError,
    PartitionDB,
    StoreError,
    checkpoint,
    decode_record,
    open_or_discard,
    out_of_resources,
    set_aside,
)

log = logging.getLogger("orderstream.engine")

#: Allocations between two young-generation collections (CPython's default is 700).
GC_THRESHOLD = 50_000


def tune_gc() -> None:
    """Set the collector up for the engine (at start, once the app is loaded).

    The objects alive after start-up (modules, the app) never need collecting, and a step
    allocates many short-lived ones: move the former out of the collector's way and let it
    run less often (measured: a quarter of the handler path's CPU was GC).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)


#: Seconds between two of the engine's log lines about what it did.
STATS_EVERY = 5.0

#: Seconds a task waits after a failed commit before it handles its inputs again.
RETRY_AFTER = 1.0
#: Restores of a new assignment tried in its rebalance listener before the worker stops (each
#: may take up to the restore's stall timeout; the group waits for the listener meanwhile).
RECOVER_ATTEMPTS = 3
#: How many refusals of awaited commands the engine remembers for the HTTP edge.
REFUSALS_KEPT = 1000
#: How long closing a revoked task waits for its commit in flight to end before aborting it.
CLOSE_COMMIT_WAIT = 10.0
#: How long :meth:`Engine.produce` (the HTTP edge's writes) waits for the broker to take a record.
PRODUCE_WAIT = 10.0

Handler = Callable[[Step, Any], Awaitable[None] | None]
Decoder = Callable[[Any, str | None], Any]
DeadLetter = Callable[[str, "Record", BaseException], tuple[str, bytes, bytes]]


class EffectFailed(Exception):
    """Raised by an effect whose input is to be dead-lettered (its stage gave up: a notifier that
    kept failing); the letter is written by the partition's next step, as a handler's would be."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Route:
    """A stage's handler for some message types of one input topic."""

    stage: str
    topic: str
    types: frozenset[str]
    handler: Handler


@dataclass
class Task:
    """Partition ``p`` of every topic and store on this worker."""

    partition: int
    step: Step
    producer: AIOKafkaProducer
    #: Next offset to read per input topic-partition (what the step has handled).
    position: dict[TopicPartition, int] = field(default_factory=dict)
    #: Offsets of inputs whose effects are still running: the commit stays below them.
    held: dict[TopicPartition, Counter[int]] = field(default_factory=dict)
    backlog: deque[tuple[TopicPartition, list[Record]]] = field(default_factory=deque)
    #: Local inputs: ``(logical topic, envelope, held topic-partition or None, held offset, trace headers)``.
    local: deque[tuple[str, Any, TopicPartition | None, int, list[tuple[str, bytes]]]] = field(default_factory=deque)
    effects: set[asyncio.Task[None]] = field(default_factory=set)
    in_txn: bool = False
    dirty: bool = False
    committing: asyncio.Task[None] | None = None
    last_commit: float = field(default_factory=time.monotonic)
    #: Delivery of the outputs sent since the last commit began.
    sends: list[asyncio.Future[Any]] = field(default_factory=list)
    #: The plain producer the at-least-once outputs since the last commit went through.
    output_producer: AIOKafkaProducer | None = None
    #: Exactly-once outputs of steps that ran while a commit was in flight: they go in the next transaction.
    deferred: list[Output] = field(default_factory=list)
    ready: bool = False
    #: Revoked from this worker (closing or closed): never reset, never committed again.
    closed: bool = False
    #: Sending the consumer back to the committed offsets after a failed commit.
    rewinding: bool = False
    #: After a failed commit the task waits this long (monotonic time) before reading its inputs again.
    retry_at: float = 0.0
    #: When the task last went back to its committed offsets: records fetched before that are stale.
    reset_at: float = 0.0
    #: Resets so far: a step that finds it changed after an await was overtaken by one (its work is dropped).
    resets: int = 0
    #: Next offset expected from the fetcher per input partition (an offset is never handled twice).
    fetched: dict[TopicPartition, int] = field(default_factory=dict)
    #: Where the last reset sent each input partition back to (``None``: its beginning).
    rewind: dict[TopicPartition, int | None] = field(default_factory=dict)
    #: Per input partition, the offset below which every handled record's writes are in RocksDB.
    landed: dict[TopicPartition, int] = field(default_factory=dict)
    #: Restored from its changelogs, the task has inputs to read again (the end of each input
    #: partition when it was restored); timers wait until it has (:meth:`Engine.replayed`).
    #: ``None``: nothing left to read again; :attr:`replay_unknown`: not looked up yet.
    replay: dict[TopicPartition, int] | None = None
    replay_unknown: bool = False
    #: Where the consumer stood on each input partition after the last fetch taken in.
    read_to: dict[TopicPartition, int] = field(default_factory=dict)


class Waiters:
    """Futures woken when a commit lands a key: long-polls and commands waiting to see their effect."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    async def wait(self, key: str, timeout: float) -> bool:
        """Wait until :meth:`wake` is called for ``key``; ``False`` after ``timeout`` seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        group = self._by_key.setdefault(key, set())
        group.add(fut)
        try:
            async with asyncio.timeout(timeout):  # no task per waiter, unlike wait_for
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            group.discard(fut)
            if not group:
                self._by_key.pop(key, None)

    def wake(self, key: str) -> None:
        """Wake everyone waiting for ``key``."""
        for fut in self._by_key.pop(key, ()):
            if not fut.done():
                fut.set_result(None)


@dataclass
class StoreDef:
    """A store: its name, its changelog topic and how its derived indexes are computed."""

    name: str
    changelog: str
    #: ``entity(key) -> str | None``: the id long-polls wait on when ``key`` is written.
    entity: Callable[[str], str | None] | None = None


class Engine:
    """The stages of every owned partition number, their state and their commits."""

    def __init__(
        self,
        *,
        app_id: str,
        bootstrap: str,
        partitions: int,
        exactly_once: bool,
        commit_interval: float,
        datadir: Path,
        linger_ms: int,
        session_timeout_ms: int,
        decode: Decoder,
        dead_letter: DeadLetter,
        indexer: Indexer | None = None,
        give_up_after: float = 30.0,
        flush_after: float = FLUSH_AFTER,
        give_up: Callable[[str], None] | None = None,
    ) -> None:
        self.app_id = app_id
        self.group_id = f"{app_id}.engine"
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.exactly_once = exactly_once
        self.commit_interval = commit_interval
        self.datadir = datadir
        self.linger_ms = linger_ms
        self.session_timeout_ms = session_timeout_ms
        #: Seconds a fenced task waits for the rebalance that moved its partition (two sessions).
        self.fence_grace = 2 * session_timeout_ms / 1000
        self.decode = decode
        self.dead_letter = dead_letter
        self.indexer = indexer
        #: Seconds a partition may fail to open or restore its database (a full or read-only
        #: disk) before this worker stops so that the group hands its partitions to the others.
        self.give_up_after = give_up_after
        self.flush_after = flush_after
        self._give_up = give_up or _stop_this_process
        self._gave_up = False
        #: ``{partition: (monotonic time of its first failure in a row, failures)}``.
        self._failing: dict[int, tuple[float, int]] = {}
        self.routes: dict[str, list[Route]] = {}
        self.stores: dict[str, StoreDef] = {}
        self.topics: dict[str, str] = {}  # kafka topic -> logical name
        self.tasks: dict[int, Task] = {}
        self.dbs: dict[int, PartitionDB] = {}
        self.waiters = Waiters()
        #: Why a handler refused an event someone waits for (the HTTP edge answers its command 409):
        #: ``{event id: error}``, the last :data:`REFUSALS_KEPT`.
        self.refusals: dict[str, BaseException] = {}
        self.cluster_id = ""
        #: Each changelog's Kafka topic id (:mod:`app.engine.topic_ids`), learnt at recovery.
        self.topic_ids: dict[str, str] = {}
        self.rebalancing = True
        self.assigned = False
        #: The consumer group generation of the last assignment: a gap means this worker missed a
        #: rebalance (frozen past its session), and what it held may have been owned elsewhere meanwhile.
        self.generation: int | None = None
        #: The loop stood still past what the group's session allows (:meth:`_check_frozen`).
        self.frozen = False
        self._hold_until = 0.0
        self._last_tick = time.monotonic()  # the ticker's (:meth:`_tick`): a gap is a frozen process
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stopping = False
        self._timers: list[tuple[float, Callable[[Engine], Awaitable[None] | None]]] = []
        self._next_timer = 0.0
        self.counters: Counter[tuple[str, str, str]] = Counter()
        #: Running totals for the periodic engine log line and the metrics.
        self.stats: Counter[str] = Counter()
        self._stats_mark: tuple[float, Counter[str]] = (time.monotonic(), Counter())
        self._cycle_max_ms = 0
        self._lag_reported: set[tuple[str, int]] = set()
        self._replicas: list[tuple[str, Callable[[str, Any], None]]] = []
        self._replica_tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Task[None]] = set()
        self._known_topics: dict[int, set[str]] = {}
        self._partitions_by_key: dict[bytes, int] = {}
        #: A lookup of replay targets is running (:meth:`_look_up_replays`).
        self._looking_up_replays = False
        #: A read_uncommitted client for high watermarks (:meth:`settled`), started when first needed.
        self._watermarks: AIOKafkaConsumer | None = None
        self._watermarks_lock = asyncio.Lock()
        #: The loop's fetch in flight, or one that ended and is not yet taken in.
        self._fetch: asyncio.Task[dict[TopicPartition, list[Any]]] | None = None
        #: Partitions whose database failed a read (a damaged file): rebuilt from the changelogs.
        self._damaged: dict[int, str] = {}

    # --- declaration ------------------------------------------------------------

    def topic(self, logical: str) -> str:
        """The Kafka name of a logical topic (registering it as an input)."""
        name = f"{self.app_id}.{logical}"
        self.topics[name] = logical
        return name

    def store(self, name: str, entity: Callable[[str], str | None] | None = None) -> StoreDef:
        """Declare a store; its changelog topic is ``{app_id}-{name}-changelog``."""
        store = StoreDef(name, f"{self.app_id}-{name}-changelog", entity)
        self.stores[name] = store
        return store

    def route(self, stage: str, logical_topic: str, types: Iterable[str], handler: Handler) -> None:
        """Run ``handler`` for messages of ``types`` on ``logical_topic``."""
        self.topic(logical_topic)
        self.routes.setdefault(logical_topic, []).append(Route(stage, logical_topic, frozenset(types), handler))

    def replicate(self, store: str, fn: Callable[[str, Any], None]) -> None:
        """Feed ``fn(key, value)`` every record of ``store`` from all partitions (a read-only replica)."""
        self._replicas.append((store, fn))

    def every(self, interval: float, fn: Callable[[Engine], Awaitable[None] | None]) -> None:
        """Call ``fn(engine)`` about every ``interval`` seconds from the engine's loop."""
        self._timers.append((interval, fn))

    # --- lifecycle --------------------------------------------------------------

    async def start(self, url: str) -> None:
        """Connect, join the group and start the loop (returns at once; see :attr:`ready`)."""
        tune_gc()
        self.cluster_id = await self._read_cluster_id()
        self.producer = await self._producer()
        TaskAssignor.url = url
        TaskAssignor.partitions = self.partitions
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(TaskAssignor,),
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(500, self.session_timeout_ms // 5),
            max_poll_interval_ms=300_000,
            # The broker answers a fetch as soon as any partition has a record (fetch_min_bytes
            # 1); the wait only bounds an idle poll. 5 ms polled 200 times a second for nothing:
            # 0.4 core of workers and broker at idle, a quarter of the CPU per order at 1,000/s.
            fetch_max_wait_ms=500,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self.consumer.start()
        self.consumer.subscribe(sorted(self.topics), listener=_Listener(self))
        self._loop_task = asyncio.create_task(self._run(), name="orderstream-engine")
        self._ticker = asyncio.create_task(self._tick(), name="orderstream-engine-ticker")
        for store, fn in self._replicas:
            self._replica_tasks.append(asyncio.create_task(self._tail(self.stores[store].changelog, fn)))

    async def _tail(self, topic: str, fn: Callable[[str, Any], None]) -> None:
        """Follow a changelog (all partitions, committed records) for ever."""
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            async for record in consumer:
                try:
                    fn(record.key.decode(), None if record.value is None else decode_record(record.value))
                except Exception as exc:  # noqa: BLE001 - a record the app cannot have written (by hand) is skipped
                    # One line, no traceback: the replica reads the whole changelog at every start.
                    log.warning(
                        "replica of %s skipped the record at [%s]@%s: %s",
                        topic,
                        record.partition,
                        record.offset,
                        f"{type(exc).__name__}: {exc}"[:300],
                    )
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        """Commit what is handled, leave the group, close everything."""
        self._stopping = True
        self._wakeup.set()
        for job in self._replica_tasks:
            job.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        async with self._lock:
            await self._commit_all()
            for task in list(self.tasks.values()):
                await self._close_task(task)
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        if self._watermarks is not None:
            with contextlib.suppress(Exception):
                await self._watermarks.stop()
        for partition, db in self.dbs.items():
            try:
                db.close()
            except Exception as exc:  # noqa: BLE001 - e.g. its files were removed: the changelogs hold it all
                log.warning("partition %s: its database did not close cleanly: %s", partition, exc)
        self.dbs.clear()

    @property
    def ready(self) -> bool:
        """Partitions assigned, every task recovered, no rebalance under way."""
        return self.assigned and not self.rebalancing and all(t.ready for t in self.tasks.values())

    def serving(self) -> list[int]:
        """Partition numbers this worker answers for now."""
        if not self.ready:
            return []
        return sorted(p for p, t in self.tasks.items() if t.ready)

    def db(self, partition: int) -> PartitionDB | None:
        """The committed database of a partition this worker serves, else ``None``."""
        task = self.tasks.get(partition)
        return task.step.db if task is not None and task.ready and not self.rebalancing else None

    def latest(self, partition: int) -> PartitionDB | Step | None:
        """What a read of a partition this worker serves sees, else ``None``.

        Under exactly-once, the committed state: a step's outputs are visible only once it is
        committed, and so are its writes. Under at-least-once a step's outputs are sent as it
        ends, before its commit, so a read sees the step's writes too (the live :class:`Step`,
        read like a database): nothing a read answers lags an event already out, e.g. the stock
        an ``inventory.released`` gave back is seen as soon as the order's end is.
        """
        db = self.db(partition)
        return db if db is None or self.exactly_once else self.tasks[partition].step

    def partition_for(self, key: str) -> int:
        """The partition ``key`` hashes to (the Java client's default partitioner)."""
        return self._hash_partition(key.encode())

    def _hash_partition(self, key: bytes) -> int:
        partition = self._partitions_by_key.get(key)
        if partition is None:  # murmur2 is pure Python here: keys (orders, products) repeat, so remember them
            if len(self._partitions_by_key) > 100_000:
                self._partitions_by_key.clear()
            partition = self._partitions_by_key[key] = partition_of(key, self.partitions)
        return partition

    async def settled(self, logical: str, key: str, timeout: float) -> bool:
        """Wait until the committed state here holds every record of ``key``'s partition of ``logical`` sent so far.

        Read-your-writes for the HTTP edge: a record the broker acknowledged before this call
        is handled and its writes are in RocksDB when this returns True (False: not within
        ``timeout``, or the partition is not this worker's). The end is the high watermark
        (records of transactions still open included: the consumer passes them only once they
        end), asked of the broker now.
        """
        return await self.settled_partition(logical, self.partition_for(key), timeout)

    async def settled_partition(self, logical: str, partition: int, timeout: float) -> bool:
        """:meth:`settled` for every key of ``partition``."""
        task = self.tasks.get(partition)
        if task is None or not task.ready or self.consumer is None:
            return False
        tp = TopicPartition(f"{self.app_id}.{logical}", task.partition)
        deadline = time.monotonic() + timeout
        try:
            async with self._watermarks_lock:
                if self._watermarks is None:
                    client = AIOKafkaConsumer(
                        bootstrap_servers=self.bootstrap, group_id=None, isolation_level="read_uncommitted"
                    )
                    await client.start()
                    self._watermarks = client
            end = (await asyncio.wait_for(self._watermarks.end_offsets([tp]), timeout))[tp]
            while True:
                if task.closed:
                    return False
                landed = task.landed.get(tp, 0)
                if landed >= end:
                    return True  # every record before ``end`` is handled and in RocksDB (under load)
                # The last records before ``end`` may be transaction markers, which are never
                # handled: when the consumer has read past ``end``, the loop has taken in what it
                # read (a fetch that ended is not yet in ``fetched``) and every record taken in
                # is landed, nothing before ``end`` is left either (idle). Not while the task
                # resets after a failed commit: it has dropped what it took in, and the consumer
                # stands past records that never landed until it is sent back.
                position = await asyncio.wait_for(self.consumer.position(tp), max(deadline - time.monotonic(), 0.01))
                if (
                    position >= end
                    and task.ready
                    and not task.rewinding
                    and (self._fetch is None or not self._fetch.done())
                    and task.landed.get(tp, 0) >= task.fetched.get(tp, 0)
                    and not task.closed
                ):
                    return True
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.01)
        except (TimeoutError, KafkaError, AssertionError, IllegalStateError):
            return False

    # --- producing outside the steps (HTTP edge) ----------------------------------

    async def _read_cluster_id(self) -> str:
        """The Kafka cluster's id, as the broker says it now."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            await admin.start()
            return str((await admin.describe_cluster()).get("cluster_id") or "")
        finally:
            await admin.close()

    async def produce(
        self, logical: str, key: str, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Send one record through the plain producer and wait until the broker has it.

        Waits at most :data:`PRODUCE_WAIT` seconds (``KafkaTimeoutError``): a client of the
        HTTP edge is told 503 while it still waits, not after the producer's own 40 s (probe
        24); the record may still land later, as after any timeout.
        """
        producer = self.producer
        if producer is None:
            # Starting (its web port opens before the engine) or stopped: a 503 with Retry-After
            # at the edge, as for a broker that does not answer (probe 25: a 500 for ~2 s at start).
            raise KafkaConnectionError("this worker's engine is not started (starting or stopping)")
        try:
            async with asyncio.timeout(PRODUCE_WAIT):
                fut = await producer.send(
                    f"{self.app_id}.{logical}", value, key.encode(), partition=self.partition_for(key), headers=headers
                )
                await fut
        except TimeoutError:
            raise KafkaTimeoutError(f"the broker did not take the record within {PRODUCE_WAIT:g} s") from None
        except Exception:
            await self._renew_producer(producer)
            raise

    async def _renew_producer(self, broken: AIOKafkaProducer) -> None:
        """Replace the plain producer after a send it made failed for good.

        An idempotent producer numbers its batches per partition; one the broker refused
        (e.g. too large) leaves a gap, and aiokafka then fails every later batch to that
        partition with ``OutOfOrderSequenceNumber`` (the Java client resets its producer id
        instead). A new producer has a new id and starts its numbering again. Several tasks
        may see the same failure: only the first replaces it.
        """
        if self.producer is not broken:
            return
        fresh = await self._producer()
        if self.producer is broken:
            self.producer = fresh
            self._known_topics.pop(id(broken), None)
            self._background(broken.stop())
            log.warning("a send failed for good: the plain producer was replaced")
        else:
            self._background(fresh.stop())

    # --- the loop ---------------------------------------------------------------

    async def _run(self) -> None:
        assert self.consumer is not None
        fetch: asyncio.Task[dict[TopicPartition, list[Any]]] | None = None
        fetch_started = 0.0
        wake: asyncio.Task[bool] | None = None
        while not self._stopping:
            if fetch is None:
                fetch = asyncio.ensure_future(self.consumer.getmany(timeout_ms=200, max_records=2000))
                fetch_started = time.monotonic()
                self._fetch = fetch
            if wake is None:
                wake = asyncio.ensure_future(self._wakeup.wait())
            await asyncio.wait({fetch, wake}, timeout=self._until_timer(), return_when=asyncio.FIRST_COMPLETED)
            batch: dict[TopicPartition, list[Any]] = {}
            positions: dict[TopicPartition, int] = {}
            if fetch.done():
                try:
                    batch = fetch.result()
                    positions = self._consumed_positions()  # at once: what this fetch handed out ends there
                except Exception as exc:  # noqa: BLE001 - a failed fetch is retried; it must never end the loop
                    log.warning("fetch failed: %r", exc)
                    await asyncio.sleep(0.1)
                fetch = None
            if wake.done():
                wake = None
                self._wakeup.clear()
            self._check_frozen()  # before anything fetched is handled, whichever task wakes first
            try:
                cycle_started = time.monotonic()
                async with self._lock:
                    await self._cycle(batch, fetch_started, positions)
                if fetch is None:
                    self._fetch = None  # taken in
                spent = time.monotonic() - cycle_started
                self.stats["cycles"] += 1
                self.stats["cycle_ms"] += int(spent * 1000)
                self._cycle_max_ms = max(self._cycle_max_ms, int(spent * 1000))
            except Exception:
                log.exception("engine step failed")
                await asyncio.sleep(0.1)

    async def _tick(self) -> None:
        """Note the time twice a second: a gap means the whole process stood still."""
        while not self._stopping:
            self._check_frozen()
            await asyncio.sleep(0.5)

    def _check_frozen(self) -> None:
        """Hold every step a moment when the loop stood still long enough for the group to expire
        this member (the process frozen: SIGSTOP, a suspended VM, a stalled host).

        Its partitions may belong to another worker already, and what it fetched before the
        freeze would be handled at once: under at-least-once a confirmation sent again after the
        new owner sent it. The overdue heartbeat finds out within milliseconds: an expired member
        rejoins (the revocation takes nothing of the held work, the assignment restores what it
        gets), and one that was not expired goes on after the hold, nothing lost.
        """
        now = time.monotonic()
        seconds, self._last_tick = now - self._last_tick, now
        heartbeat_ms = max(500, self.session_timeout_ms // 5)
        if not self.assigned or seconds * 1000 < self.session_timeout_ms - heartbeat_ms:
            return
        log.warning(
            "the event loop stood still for %.1f s (session %.0f s): holding every partition until the group "
            "says whether this worker still has them",
            seconds,
            self.session_timeout_ms / 1000,
        )
        self.frozen = True
        self._hold_until = time.monotonic() + 3 * heartbeat_ms / 1000

    async def _abandon_step(self, task: Task, error: BaseException) -> None:
        """Drop a failed step's work and read its inputs again (a commit in flight ends first).

        A handler's failure dead-letters its input; what fails outside a handler (writing a dead
        letter, the engine itself) must not leave the rest of the step's records unhandled while
        later offsets commit over them.
        """
        if await self._still_held(task):
            # A fenced producer (the partition moved: its new owner started one with the same
            # transactional id) must not be replaced here: a new one would fence the new owner.
            txn = getattr(task.producer, "_txn_manager", None)
            fenced = isinstance(error, ProducerFenced) or (txn is not None and txn.is_fatal_error())
            await self._reset(task, fenced=fenced)

    async def _still_held(self, task: Task) -> bool:
        """Let the task's commit in flight end; whether the task is still its partition's afterwards."""
        if task.committing is not None:
            with contextlib.suppress(Exception):
                await task.committing
        return not task.closed and self.tasks.get(task.partition) is task

    def _until_timer(self) -> float:
        return max(0.0, min(self._next_timer - time.monotonic(), 0.25))

    async def _cycle(
        self,
        batch: dict[TopicPartition, list[Any]],
        fetched_at: float = 0.0,
        positions: dict[TopicPartition, int] | None = None,
    ) -> None:
        for tp, at in (positions or {}).items():
            task = self.tasks.get(tp.partition)
            if task is not None and task.ready and fetched_at >= task.reset_at:
                task.read_to[tp] = at
        for tp, records in batch.items():
            task = self.tasks.get(tp.partition)
            if task is None or not task.ready:
                continue  # not ours (anymore): its owner reads it from the committed offset
            if fetched_at < task.reset_at:
                # Fetched before the task went back to its committed offsets: the consumer has
                # moved past these records, so send it back again before dropping them.
                await self._rewind(task, tp)
                continue
            position = task.fetched.get(tp)
            if position is not None and records[0].offset < position:
                records = [r for r in records if r.offset >= position]  # never handle an offset twice
                if not records:
                    continue
            task.fetched[tp] = records[-1].offset + 1
            task.backlog.append((tp, records))
        now = time.monotonic()
        # Between a revocation and the assignment that follows, no task steps or commits: a task
        # may be about to close, and a commit it started could race the close's abort.
        if self.frozen and now >= self._hold_until and not self.rebalancing:
            self.frozen = False  # the member outlived the freeze: go on
        working = not self.rebalancing and not self.frozen
        for task in list(self.tasks.values()):
            if working and task.ready and (task.backlog or task.local) and task.retry_at <= now:
                try:
                    await self._step(task)
                except StoreError as exc:
                    self.report_damage(task.partition, exc)
                except Exception as exc:  # the engine's own fault: the inputs are read again, never skipped
                    log.exception(
                        "partition %s: a step failed: its uncommitted work is dropped and its inputs are read "
                        "again from the last commit",
                        task.partition,
                    )
                    await self._abandon_step(task, exc)
        if now >= self._next_timer:
            self._next_timer = now + 1.0
            logs.flush()
            for p, db in list(self.dbs.items()):
                try:
                    db.flush_if_due(now, self.flush_after)
                    db.check_background()
                except StoreError as exc:
                    self.report_damage(p, exc)
            self._log_stats(now)
            try:
                await self._publish_metrics()
            except Exception:  # the figures wait for the next second; the cycle goes on
                log.warning("publishing the engine's metrics failed", exc_info=True)
            self._look_up_replays()
            for _interval, fn in self._timers:
                try:
                    result = fn(self)
                    if result is not None:
                        await result
                except StoreError as exc:
                    self.report_damage(exc.partition, exc)
        for partition in list(self._damaged) if working else ():
            task = self.tasks.get(partition)
            if task is None or task.retry_at <= now:
                why = self._damaged.pop(partition)
                if task is not None:
                    await self._rebuild(task, why)
        # Under exactly-once the outputs wait for the commit: an idle task commits at once. At
        # least once they are sent already; committing every event of a slow trickle would
        # only multiply transactions (each a handful of broker requests and markers).
        idle = not batch and self.exactly_once
        for task in list(self.tasks.values()):
            due = idle or now - task.last_commit >= self.commit_interval
            if working and task.ready and task.dirty and task.committing is None and due:
                task.committing = asyncio.create_task(self._commit(task))

    def _consumed_positions(self) -> dict[TopicPartition, int]:
        """Where the consumer stands on the inputs of tasks still reading theirs again (see :meth:`replayed`).

        Read as soon as a fetch is taken, before anything else runs: the position then is just
        past what that fetch handed out, transaction markers and aborted records included.
        """
        if not any(t.replay or t.replay_unknown for t in self.tasks.values()):
            return {}
        subscription = getattr(getattr(self.consumer, "_subscription", None), "subscription", None)
        assignment = getattr(subscription, "assignment", None)
        if assignment is None:
            return {}
        out = {}
        for tp in assignment.tps:
            task = self.tasks.get(tp.partition)
            if task is not None and (task.replay or task.replay_unknown):
                state = assignment.state_value(tp)
                if state is not None and state.has_valid_position:
                    out[tp] = state.position
        return out

    def _look_up_replays(self) -> None:
        """Start looking up how far each task restored since the last tick must read its inputs again.

        In the background, outside the loop's lock (review: a slow broker held every partition
        for up to 5 s a second); applied only to a task still its partition's and not reset since.
        """
        waiting = [t for t in self.tasks.values() if t.ready and t.replay_unknown]
        if waiting and self.consumer is not None and not self._looking_up_replays:
            self._looking_up_replays = True
            self._background(self._replay_ends(waiting))

    async def _replay_ends(self, waiting: list[Task]) -> None:
        assert self.consumer is not None
        resets = {t.partition: t.resets for t in waiting}
        try:
            mine = [tp for tp in self.consumer.assignment() if tp.partition in resets]
            ends = await asyncio.wait_for(self.consumer.end_offsets(mine), 5) if mine else {}
        except Exception as exc:  # noqa: BLE001 - the broker is slow or away: asked again at the next tick
            log.debug("end offsets for the replay of %s: %r", sorted(resets), exc)
            return
        finally:
            self._looking_up_replays = False
        for task in waiting:
            if self.tasks.get(task.partition) is task and task.resets == resets[task.partition] and task.replay_unknown:
                task.replay = {tp: end for tp, end in ends.items() if tp.partition == task.partition} or None
                task.replay_unknown = False

    def replayed(self, task: Task) -> bool:
        """Whether the task, restored from its changelogs, has handled every input that was in its log then.

        Timers wait for it (probe 25): at-least-once, outputs go out before the commit that
        holds the state that sent them; a task restored after that commit failed (a broker
        outage) stands in an earlier state until its inputs are handled again, and a deadline
        acting on that state cancelled an order already confirmed, notified and counted.
        """
        if task.replay_unknown:
            return False
        if task.replay is None:
            return True
        if any(task.read_to.get(tp, -1) < end for tp, end in task.replay.items()):
            return False
        if any(tp in task.replay for tp, _ in task.backlog):
            return False  # taken in, not handled yet
        task.replay = None
        return True

    async def _publish_metrics(self) -> None:
        """Move the loop's counts to Prometheus (once a second, not per event) and sample the lag."""
        for (stage, type_, result), n in self.counters.items():
            if result == "handled":
                metrics.EVENTS_PROCESSED.labels(stage, type_).inc(n)
            else:
                metrics.EVENTS_SKIPPED.labels(stage, result).inc(n)
                if result == "dead_lettered":
                    metrics.DEAD_LETTERS.labels(stage).inc(n)
        self.counters.clear()
        if self.consumer is None:
            return
        seen = set()
        for tp in self.consumer.assignment():
            task = self.tasks.get(tp.partition)
            try:
                end = self.consumer.highwater(tp)
            except AssertionError:  # aiokafka's "Partition is not assigned": a rebalance began meanwhile
                continue
            if task is None or end is None:
                continue
            # Kafka's records-lag: the high watermark minus where the consumer stands (which is
            # past transaction markers; the offset after the last handled record may not be).
            try:
                position = await asyncio.wait_for(self.consumer.position(tp), 0.1)
            except (TimeoutError, KafkaError, AssertionError):
                continue
            metrics.set_lag(tp.topic, tp.partition, end - position)
            seen.add((tp.topic, tp.partition))
        for topic, partition in self._lag_reported - seen:
            metrics.forget_lag(topic, partition)
        self._lag_reported = seen

    def _log_stats(self, now: float) -> None:
        """One line every :data:`STATS_EVERY` seconds with what the loop did since the last one."""
        since, before = self._stats_mark
        if now - since < STATS_EVERY:
            return
        self._stats_mark = (now, Counter(self.stats))
        delta = self.stats - before
        if delta["records"]:
            log.info(
                "engine: %d records in %d steps and %d cycles (avg %.1f ms, max %d ms), %d commits (avg %.1f ms), "
                "%d changelog records in %.1f s",
                delta["records"],
                delta["steps"],
                delta["cycles"],
                delta["cycle_ms"] / max(delta["cycles"], 1),
                self._cycle_max_ms,
                delta["commits"],
                delta["commit_ms"] / max(delta["commits"], 1),
                delta["changelog_records"],
                now - since,
            )
        self._cycle_max_ms = 0

    # --- a step -----------------------------------------------------------------

    async def _step(self, task: Task) -> None:
        resets = task.resets
        while task.local:
            logical, env, tp, offset, headers = task.local.popleft()
            failed = env.get("_failed") if env.get("type") == "_effect_failed" else None
            if failed is not None and failed[0] is not None:
                (record, stage, original), error = failed
                self.counters[(stage, str(original.get("type")), "dead_lettered")] += 1
                self._dead_letter(task, logical, record, error, stage=stage, env=original)
            else:
                await self._handle_local(task, logical, env, headers, offset)
            if task.resets != resets:
                return self._overtaken(task)
            held = task.held.get(tp) if tp is not None else None
            if held is not None:
                held[offset] -= 1
                if held[offset] <= 0:
                    del held[offset]
            task.dirty = True
        self.stats["steps"] += 1
        while task.backlog:
            tp, records = task.backlog.popleft()
            self.stats["records"] += len(records)
            logical = self.topics.get(tp.topic, tp.topic)
            for record in records:
                await self._handle(task, logical, record)
                if task.resets != resets:
                    return self._overtaken(task)
            task.position[tp] = records[-1].offset + 1
            task.dirty = True
        await self._flush_outputs(task)

    @staticmethod
    def _overtaken(task: Task) -> None:
        """A reset ran while a handler of this step awaited (a failed commit, in the background):
        what the step did after it is dropped, and its inputs are read again from the commit
        (review: the step went on into the fresh state and moved the position past the rewind)."""
        task.step.reset()
        task.dirty = False

    async def _handle(self, task: Task, logical: str, record: Record) -> None:
        step = task.step
        routes = self.routes.get(logical, ())
        value: Any = None
        try:
            value = orjson.loads(record.value) if record.value is not None else None
            env = self.decode(value, logical)  # every message is checked whole, even one no stage here handles
        except Exception as exc:  # noqa: BLE001 - whatever cannot be read is dead-lettered, never crashes the task
            if not logical.endswith(".dlq"):
                self._dead_letter(task, logical, record, exc, env=value if isinstance(value, dict) else None)
                return
            env = self._unreadable_letter(logical, record, exc)
            if env is None:
                return
        type_ = env["type"]
        waited = env["id"] in self.waiters if len(self.waiters) else False
        for route in routes:
            if type_ not in route.types:
                continue
            step.begin(route.stage, logical, record.offset, env)
            try:
                with (
                    logs.event_context(stage=route.stage, partition=record.partition, offset=record.offset, env=env),
                    tracing.stage_span(
                        route.stage, env, record.headers, partition=record.partition, offset=record.offset
                    ),
                ):
                    result = route.handler(step, env)
                    if result is not None:
                        resets = task.resets
                        await result
                        if task.resets != resets:
                            step.effects = []  # read again from the commit: started then
                            return
                    if step.effects:  # started inside the span: their results continue the trace
                        self._launch(task, record, step.effects, route.stage, env)
                        step.effects = []
            except StoreError:
                step.rollback()
                raise  # the database, not the message: the partition is rebuilt and reads it again
            except Exception as exc:  # noqa: BLE001 - a handler failure dead-letters its input, never stops the task
                step.rollback()
                self.counters[(route.stage, type_, "dead_lettered")] += 1
                if waited:
                    # The HTTP edge answers this command 409: its dead letter says so and is never
                    # redriven (it would take effect after its client was told it did not).
                    exc.answered = 409  # type: ignore[attr-defined]
                self._dead_letter(task, logical, record, exc, stage=route.stage, env=env)
                if waited:
                    self._refused(env["id"], exc)
                continue
            self.counters[(route.stage, type_, "handled")] += 1
        if waited:
            step.handled.append(env["id"])

    async def _handle_local(
        self, task: Task, logical: str, env: dict[str, Any], headers: list[tuple[str, bytes]], origin: int = -1
    ) -> None:
        """A local input (an effect's result, a timer's command): handled like a message of ``logical``.

        ``origin``: the offset of the input that started the effect, which its log lines carry
        (a timer's command has none: -1).
        """
        step = task.step
        type_ = env["type"]
        for route in self.routes.get(logical, ()):
            if type_ not in route.types:
                continue
            step.begin(route.stage, logical, -1, env)
            try:
                with (
                    logs.event_context(stage=route.stage, partition=task.partition, offset=origin, env=env),
                    tracing.stage_span(route.stage, env, headers, partition=task.partition),
                ):
                    result = route.handler(step, env)
                    if result is not None:
                        await result
            except StoreError:
                step.rollback()
                raise  # rebuilt, then the input that started the effect is read again
            except Exception:
                step.rollback()
                log.exception("local input %s failed in stage %s", type_, route.stage)
                continue
            self.counters[(route.stage, type_, "handled")] += 1

    def _launch(
        self, task: Task, record: Record, effects: list[tuple[str, Any]], stage: str = "", env: Any = None
    ) -> None:
        tp = TopicPartition(record.topic, record.partition)
        logical = self.topics.get(record.topic, record.topic)
        held = task.held.setdefault(tp, Counter())
        for name, effect in effects:
            held[record.offset] += 1
            job = asyncio.get_running_loop().create_task(
                self._effect(task, logical, tp, record.offset, name, effect, (record, stage, env))
            )
            task.effects.add(job)
            job.add_done_callback(task.effects.discard)

    async def _effect(
        self,
        task: Task,
        logical: str,
        tp: TopicPartition,
        offset: int,
        name: str,
        effect: Any,
        origin: tuple[Record, str, Any] | None = None,
    ) -> None:
        """Run one effect; its result (or an empty marker) comes back as a local input that releases the hold.

        An effect that raises :class:`EffectFailed` comes back as a marker carrying its input
        (``origin``: the record, the stage, the envelope), which the step dead-letters.
        """
        try:
            env = await effect()
        except asyncio.CancelledError:
            raise
        except EffectFailed as failed:
            env = {"type": "_effect_failed", "id": "", "payload": {}, "_failed": (origin, failed.error)}
        except Exception:
            log.exception("effect %s failed; its input is read again after a restart", name)
            env = None
        headers: list[tuple[str, bytes]] = []
        tracing.inject(headers)  # the span of the handler that started the effect: the result continues its trace
        task.local.append((logical, env or {"type": "_effect_done", "id": "", "payload": {}}, tp, offset, headers))
        self._wakeup.set()

    def _background(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` without waiting for it; its failure is only logged."""

        async def run() -> None:
            try:
                await coro
            except Exception as exc:  # noqa: BLE001 - a background clean-up must not crash anything
                log.debug("background task failed: %r", exc)

        job = asyncio.get_running_loop().create_task(run())
        self._bg.add(job)
        job.add_done_callback(self._bg.discard)

    def wake(self) -> None:
        """Make the loop look at local inputs now."""
        self._wakeup.set()

    def _unreadable_letter(self, logical: str, record: Record, error: BaseException) -> dict[str, Any] | None:
        """The letter an unreadable message on a dead-letter topic becomes, handled in its place.

        There is no dead-letter topic for a dead-letter topic: the message is kept where it is
        as a letter about itself (listable, never redriven), so nothing is dropped unseen.
        """
        log.warning(
            "keeping unreadable message %s[%s]@%s on a dead-letter topic as a letter: %s",
            record.topic,
            record.partition,
            record.offset,
            f"{type(error).__name__}: {error}"[:500],
        )
        self.counters[(logical, "_unreadable", "dead_lettered")] += 1
        _, _, value = self.dead_letter(logical, record, error)
        try:
            return self.decode(orjson.loads(value), logical)  # type: ignore[no-any-return]
        except Exception:
            log.exception("dropping unreadable message %s[%s]@%s", record.topic, record.partition, record.offset)
            return None

    def _refused(self, event_id: str, error: BaseException) -> None:
        self.refusals[event_id] = error
        while len(self.refusals) > REFUSALS_KEPT:
            del self.refusals[next(iter(self.refusals))]

    def _dead_letter(
        self,
        task: Task,
        logical: str,
        record: Record,
        error: BaseException,
        stage: str = "",
        env: dict[str, Any] | None = None,
    ) -> None:
        # With the event's fields (event_id, event_type, order_id, stage, partition, offset) as
        # every stage line has them; an unreadable message has only its position.
        where = {"stage": stage or logical, "partition": record.partition, "offset": record.offset}
        with logs.event_context(**where, env=env or {}):
            log.warning(
                "dead-lettering %s[%s]@%s (stage %s): %s",
                record.topic,
                record.partition,
                record.offset,
                stage or logical,
                f"{type(error).__name__}: {error}"[:500],
            )
        payload = env.get("payload") if isinstance(env, dict) else None
        about = payload.get("source_topic") if isinstance(payload, dict) else None
        if logical.endswith(".dlq") and isinstance(about, str) and about.endswith(".dlq"):
            # A letter about a dead-letter topic's message failed too: another would go the same way.
            log.error("not dead-lettering %s[%s]@%s again: %s", record.topic, record.partition, record.offset, error)
            return
        topic, key, value = self.dead_letter(stage or logical, record, error)
        task.step.send(topic, key, value, tracing.continued(record.headers))  # the letter joins the message's trace
        if not stage:  # unreadable: no stage saw it (a handler's failure is counted by its stage)
            self.counters[(logical, "_unreadable", "dead_lettered")] += 1

    async def _flush_outputs(self, task: Task) -> None:
        """Hand the step's outputs to the producer: the task's transaction, or the plain producer."""
        outputs = task.step.outputs
        task.step.outputs = []
        if self.exactly_once and task.committing is not None:
            task.deferred.extend(outputs)
            return
        if task.deferred:  # deferred while the last commit ran: they come first, in order
            outputs, task.deferred = task.deferred + outputs, []
        if outputs:
            await self._send(task, outputs)

    async def _send(self, task: Task, outputs: list[Output]) -> None:
        if self.exactly_once:
            producer = task.producer
            if not task.in_txn:
                await producer.begin_transaction()
                task.in_txn = True
        else:
            assert self.producer is not None
            producer = task.output_producer = self.producer
        # Straight to the producer's accumulator (aiokafka 0.14, pinned in app/faust_patches):
        # send() would look up metadata, serialize and hash every record again. A record joins
        # its partition's open batch without a future of its own (aiokafka makes one per record,
        # and a RecordMetadata when it lands); the step waits for the batch instead, through a
        # shield, since a batch of the shared at-least-once producer also holds other tasks' records.
        accumulator = producer._message_accumulator
        batches = accumulator._batches
        timeout = producer._request_timeout_ms / 1000
        partition_of = self._partition_of
        known = self._known_topics.setdefault(id(producer), set())  # metadata is per producer (per client)
        waited: dict[TopicPartition, Any] = {}
        for out in outputs:
            if out.topic not in known:
                await producer.client._wait_on_metadata(out.topic)
                known.add(out.topic)
            tp = TopicPartition(out.topic, partition_of(out))
            pending = batches.get(tp)
            batch = pending[-1] if pending else None
            if (
                batch is not None
                and batch._builder.append(timestamp=None, key=out.key, value=out.value, headers=out.headers) is not None
            ):
                if waited.get(tp) is not batch:
                    waited[tp] = batch
                    task.sends.append(asyncio.shield(batch.future))
            else:  # no open batch, or it is full: the accumulator opens one (waiting for room)
                task.sends.append(await accumulator.add_message(tp, out.key, out.value, timeout, headers=out.headers))
                waited[tp] = batches[tp][-1]  # the record's own future stands for its batch

    def _partition_of(self, out: Output) -> int:
        return 0 if out.key is None else self._hash_partition(out.key)

    # --- commits ----------------------------------------------------------------

    def _offsets(self, task: Task) -> dict[TopicPartition, int]:
        offsets = {}
        for tp, position in task.position.items():
            held = task.held.get(tp)
            offsets[tp] = min(position, min(held)) if held else position
        return offsets

    async def _commit(self, task: Task) -> None:
        """Changelogs, offsets and (exactly-once) outputs in one transaction; then RocksDB.

        The task goes on handling input meanwhile: its writes land in a fresh overlay (the
        commit's own stay readable until RocksDB has them), and under exactly-once its
        outputs wait for the next transaction, which begins as soon as this one is committed.
        """
        began = time.monotonic()
        logs.flush()  # the lines of what this commit lands are written before it lands
        step = task.step
        # One instant: the writes, the offsets and the outputs of exactly the same handled inputs.
        # Outputs deferred while the last commit ran belong to inputs in these offsets: they go
        # in this transaction too (sent below, before anything later can be).
        writes, handled = step.freeze()
        upto = dict(task.position)  # every input below these is handled: its writes are in this commit
        offsets = self._offsets(task)
        sends, task.sends = task.sends, []
        deferred, task.deferred = task.deferred, []
        task.dirty = False
        marks = [time.monotonic()]
        try:
            if not self.exactly_once and sends:
                try:
                    await asyncio.gather(*sends)  # outputs first: offsets never commit over a lost output
                except Exception:
                    if task.output_producer is not None:
                        await self._renew_producer(task.output_producer)
                    raise
            marks.append(time.monotonic())
            if not task.in_txn:
                await task.producer.begin_transaction()
                task.in_txn = True
            if deferred:
                await self._send(task, deferred)
                sends.extend(task.sends)  # steps running meanwhile defer theirs: only these are here
                task.sends = []
            futures = []
            for store, records in writes.items():
                if not records:
                    # Only written by a handler that failed (its rollback leaves the store's map
                    # empty): an empty batch is answered with no metadata (probe 25: every commit
                    # of the partition then failed, for ever).
                    continue
                changelog = self.stores[store].changelog
                batch, n = task.producer.create_batch(), 0
                for key, (_, value_bytes) in records.items():
                    if batch.append(key=key.encode(), value=value_bytes, timestamp=None) is None:
                        fut = await task.producer.send_batch(batch, changelog, partition=task.partition)
                        futures.append((store, fut, n))
                        batch, n = task.producer.create_batch(), 0
                        batch.append(key=key.encode(), value=value_bytes, timestamp=None)
                    n += 1
                fut = await task.producer.send_batch(batch, changelog, partition=task.partition)
                futures.append((store, fut, n))
            marks.append(time.monotonic())
            if offsets:
                await task.producer.send_offsets_to_transaction(offsets, self.group_id)
            marks.append(time.monotonic())
            if self.exactly_once and sends:
                await asyncio.gather(*sends)
            last: dict[str, int] = {}
            for store, fut, n in futures:
                meta = await fut  # a batch's metadata: the offset of its first record
                last[store] = max(last.get(store, -1), meta.offset + n - 1)
            marks.append(time.monotonic())
            await task.producer.commit_transaction()
            marks.append(time.monotonic())
            if marks[-1] - marks[0] > 0.3:
                log.info(
                    "slow commit p%s: %s ms (%d sends, %d changelog)",
                    task.partition,
                    [int((b - a) * 1000) for a, b in itertools.pairwise(marks)],
                    len(sends),
                    len(futures),
                )
            task.in_txn = False
            if self.tasks.get(task.partition) is not task:
                # Landed after its close stopped waiting (CLOSE_COMMIT_WAIT): the database is the
                # partition's next task's now, restored from the changelogs this commit is in.
                log.warning("partition %s: a commit landed after its task was closed; not applied", task.partition)
                return
            checkpoints = {
                store: checkpoint(
                    offset + 1,
                    self.cluster_id,
                    self.stores[store].changelog,
                    self.topic_ids.get(self.stores[store].changelog),
                    task.partition,
                )
                for store, offset in last.items()
            }
            step.db.apply(writes, checkpoints)
            step.landed()
            task.landed.update(upto)
            self._wake_waiters(writes, handled)
            task.last_commit = time.monotonic()
            self.stats["commits"] += 1
            self.stats["commit_ms"] += int((task.last_commit - began) * 1000)
            metrics.observe_produce("transaction", task.last_commit - began)
            self.stats["changelog_records"] += sum(n for _, _, n in futures)
        except ProducerFenced:
            log.warning(
                "partition %s moved to another worker while committing: dropping its uncommitted work", task.partition
            )
            await self._reset(task, fenced=True)
        except StoreError as exc:
            # RocksDB refused the commit's batch (its derived indexes read a damaged file): the
            # transaction is in the changelogs, so the partition is rebuilt from them.
            task.ready = False  # steps nothing until then
            self.report_damage(task.partition, exc)
        except Exception:
            metrics.produce_failed("transaction")
            log.exception(
                "commit of partition %s failed: reading its inputs again from the last commit", task.partition
            )
            await self._reset(task)
        finally:
            task.committing = None
            self._wakeup.set()

    def _wake_waiters(self, writes: dict[str, dict[str, Any]], handled: list[str]) -> None:
        if not len(self.waiters):
            return
        for store, records in writes.items():
            entity = self.stores[store].entity
            if entity is None:
                continue
            for key in records:
                name = entity(key)
                if name is not None and name in self.waiters:
                    self.waiters.wake(name)
        for event_id in handled:
            self.waiters.wake(event_id)

    async def _reset(self, task: Task, *, fenced: bool = False) -> None:
        """Drop uncommitted work and read the task's inputs again from the last committed offsets."""
        if task.closed:
            # The partition was taken away while its commit ran: the new owner reads from the
            # committed offsets, and a fresh producer here would fence it.
            log.info("partition %s: commit failed after it was revoked; left to its new owner", task.partition)
            return
        task.ready = False  # from here: no step starts, and one under way drops its work (``resets``)
        task.resets += 1
        for job in list(task.sends):
            job.cancel()
        task.sends.clear()
        task.deferred.clear()
        task.in_txn = False
        if not fenced:
            # A transaction that failed can leave aiokafka's producer unable to abort it (the
            # abort waits for ever): start a new producer with the same transactional id,
            # whose init_transactions aborts whatever the old one left open.
            old = task.producer
            # Stopped in the background: a producer whose transaction failed can wait a long
            # time on its own abort, and stop() shields that wait from cancellation.
            self._background(old.stop())
            for attempt in itertools.count(1):
                if self.rebalancing or self.frozen:
                    # The assignment that follows reopens the task (not ready: never kept); a producer
                    # started now could fence the partition's next owner (review).
                    return
                try:
                    fresh = await self._transactional_producer(task.partition)
                    break
                except Exception as exc:  # noqa: BLE001 - the broker is away (probe 25: it escaped the commit task)
                    if self._stopping or task.closed or self.tasks.get(task.partition) is not task:
                        return  # stopping, or the partition moved: its next owner starts one
                    if attempt & (attempt - 1) == 0:
                        log.warning(
                            "partition %s: no producer yet (attempt %d, trying again): %r", task.partition, attempt, exc
                        )
                    await asyncio.sleep(RETRY_AFTER)
            if task.closed or self.rebalancing:  # taken away, or about to be: it would fence the new owner
                self._background(fresh.stop())
                return
            task.producer = fresh
        task.step.reset()
        task.backlog.clear()
        task.local.clear()
        for job in list(task.effects):
            job.cancel()
        task.held.clear()
        task.dirty = False
        task.retry_at = time.monotonic() + RETRY_AFTER
        task.reset_at = time.monotonic()
        task.fetched.clear()
        if fenced:
            # The rebalance that moved it recovers it, if it comes back; if none comes, the
            # fence came from outside the group: the task takes its partition back.
            self._background(self._reclaim_if_kept(task))
            return
        if self.rebalancing:
            return  # the assignment that follows reopens it (a task not ready is never kept)
        # Another worker may have committed to this task's changelogs meanwhile (it owned the
        # partition while this one was paused, and the new producer above fenced it): bring
        # the database to the changelogs' end before reading the inputs again, or the task
        # would go on from a state older than its committed offsets.
        for attempt in itertools.count(1):
            if self._stopping or task.closed or self.tasks.get(task.partition) is not task:
                return  # stopping, or the partition moved: nothing to read again here
            try:
                await self._recover([task])
                # Not ready until every input is sent back: a batch the loop fetched meanwhile from
                # the old positions would be taken, and the records re-read below it then skipped
                # as already handled (probe 24: inputs lost after a failed commit).
                task.ready = False
                targets = await self._rewind_all(task)
                self._failing.pop(task.partition, None)
                break
            except Exception as exc:  # a broker hiccup, no descriptor to reopen with: try again; the task waits
                task.ready = False
                if attempt & (attempt - 1) == 0:  # attempts 1, 2, 4, 8, …: the log says it goes on, not every time
                    log.error(
                        "partition %s: restoring after a failed commit failed (attempt %d, trying again): %s",
                        task.partition,
                        attempt,
                        exc,
                        exc_info=attempt == 1,
                    )
                if isinstance(exc, StoreError) or out_of_resources(exc):
                    self._still_failing(task.partition, exc)
                await asyncio.sleep(RETRY_AFTER)
        # Sent back with no wait until the task is ready: a batch the loop takes meanwhile (and
        # drops, the task not being ready) would move the consumer on. Whatever was fetched
        # before this is dropped and sent back again (``reset_at``).
        assert self.consumer is not None
        if task.closed or self.rebalancing or self.tasks.get(task.partition) is not task:
            return  # taken away, or about to be, while it was restored: its next owner reads from the commit
        assigned = self.consumer.assignment()
        for tp, offset in targets.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
            task.position[tp] = offset
        task.backlog.clear()
        task.fetched.clear()
        task.reset_at = time.monotonic()
        task.ready = True
        log.info("partition %s: reading its inputs again from %s", task.partition, task.rewind)

    async def _rewind_all(self, task: Task) -> dict[TopicPartition, int]:
        """Where the consumer goes back to on every input of the task's partition: its last committed
        offset (the log's beginning where none was committed)."""
        assert self.consumer is not None
        targets: dict[TopicPartition, int] = {}
        # Until the consumer is sent back it stands past records that never landed: a
        # read-your-writes wait (:meth:`settled`) must not take them for handled meanwhile.
        task.rewinding = True
        try:
            # Every input of the partition, not only those it handled since it was assigned: a
            # fetched batch of another was dropped with the backlog and must be read again.
            mine = {tp for tp in self.consumer.assignment() if tp.partition == task.partition}
            for tp in sorted(mine | set(task.position)):
                task.rewind[tp] = committed = await self.consumer.committed(tp)
                if committed is None:
                    committed = (await self.consumer.beginning_offsets([tp]))[tp]
                targets[tp] = committed
        finally:
            task.rewinding = False
        return targets

    async def _reclaim_if_kept(self, task: Task) -> None:
        """Start a fenced task again when no rebalance took its partition within the fence grace.

        A producer is fenced by another with its transactional id: a new owner's (a rebalance
        moved the partition, and closes this task within the session timeout) or one outside
        the group (a client given the app's transactional ids, a worker of the same app id
        started beside the group). In the second case no rebalance ever comes, and the
        partition would answer 503 until a restart: after :attr:`fence_grace` seconds with
        the task still this worker's, it gets a new producer (fencing the other) and is restored.
        """
        await asyncio.sleep(self.fence_grace)
        self._check_frozen()  # a process frozen past the grace is not the partition's owner for sure
        if self._stopping or self.rebalancing or self.frozen or task.closed or task.ready:
            return  # a rebalance under way closes it (a task not ready is never kept)
        if self.tasks.get(task.partition) is not task:
            return
        log.warning(
            "partition %s: still assigned here %.0f s after its producer was fenced, and no rebalance "
            "moved it (a producer outside the group used its transactional id): taking it back",
            task.partition,
            self.fence_grace,
        )
        try:
            await self._reset(task)  # as after a failed commit: not under the loop's lock
        except Exception as exc:  # noqa: BLE001 - the broker unreachable: tried again after the grace
            log.warning("partition %s: taking it back failed (%r); trying again", task.partition, exc)
            if not task.ready:
                self._background(self._reclaim_if_kept(task))

    def report_damage(self, partition: int, error: BaseException | str) -> None:
        """A read of ``partition``'s database failed (a damaged file): rebuild it from its changelogs soon.

        Called by the engine itself and by the HTTP reads; the loop sets the database aside
        and restores the partition (:meth:`_rebuild`), so one damaged block costs a restore,
        never a dead-lettered event or a read that fails for ever.
        """
        if partition in self.tasks and partition not in self._damaged:
            self._damaged[partition] = str(error)
            self._wakeup.set()

    async def _rebuild(self, task: Task, why: str) -> None:
        """Set the task's damaged database aside, restore it from the changelogs, read its inputs again."""
        if not await self._still_held(task):
            return
        task.ready = False  # steps nothing and answers no read until it is restored
        try:
            self._replace_db(task, why)
        except Exception as exc:  # noqa: BLE001 - e.g. still no descriptor or disk: try again later
            failures = self._still_failing(task.partition, exc)
            if failures & (failures - 1) == 0:  # failures 1, 2, 4, 8, …: not a line a second
                log.error(
                    "partition %s: cannot open its database again (failure %d, trying again every %g s): %s",
                    task.partition,
                    failures,
                    RETRY_AFTER,
                    exc,
                )
            task.retry_at = time.monotonic() + RETRY_AFTER
            self._damaged[task.partition] = why
            return
        await self._reset(task)

    def _still_failing(self, partition: int, error: BaseException) -> int:
        """Count a failure in a row to open or restore ``partition``'s database; give up past the limit.

        A worker that cannot keep its state (a full or read-only disk) would otherwise hold its
        partitions, and their orders, for as long as the disk stays so: past
        :attr:`give_up_after` it stops, as on SIGTERM, and the group moves them to the others.
        """
        now = time.monotonic()
        since, failures = self._failing.get(partition, (now, 0))
        self._failing[partition] = (since, failures + 1)
        if now - since >= self.give_up_after:
            self._stop_for(f"partition {partition}: its database has failed for {now - since:.0f} s ({error})")
        return failures + 1

    def _stop_for(self, problem: str) -> None:
        """Stop this worker (once) for a local problem that keeps it from holding its partitions."""
        if self._gave_up or self._stopping:
            return
        self._gave_up = True
        reason = f"{problem}; this worker stops so that the group hands its partitions to the other workers"
        log.critical("%s", reason)
        self._give_up(reason)

    @property
    def gave_up(self) -> bool:
        """Whether this worker stopped itself: a partition's database kept failing or could not be
        opened, a restore kept failing, or its data directory is another live worker's."""
        return self._gave_up

    def _replace_db(self, task: Task, why: str) -> None:
        """Open the task's database anew: the same files when the process ran out of descriptors,
        disk or memory (nothing is wrong with them), a fresh one when a file is damaged.

        Either way the caller restores the task from its changelogs, from the checkpoint the
        reopened database holds or from the beginning for a fresh one.
        """
        old = task.step.db
        with contextlib.suppress(Exception):
            old.close()
        gc.collect()  # an iterator left in a cycle would keep the closed database's lock
        if out_of_resources(why):
            if task.partition not in self._failing:  # once per run of failures, not once a second
                log.warning(
                    "partition %s: RocksDB failed for want of resources (%s); opening it again", task.partition, why
                )
        else:
            set_aside(old.path, task.partition, f"cannot be read ({why})")
        old.path.parent.mkdir(parents=True, exist_ok=True)  # the data directory itself may have been removed
        db = PartitionDB(old.path, task.partition, self.indexer)
        self.dbs[task.partition] = db
        task.step.db = db

    async def _rewind(self, task: Task, tp: TopicPartition) -> None:
        """Point the consumer at ``tp``'s last committed offset (the beginning when none)."""
        assert self.consumer is not None
        # Not looked up yet (an input this task had not read when it was reset): ask, never assume
        # "nothing committed" and read the whole log again.
        committed = task.rewind[tp] if tp in task.rewind else await self.consumer.committed(tp)
        if committed is None:
            await self.consumer.seek_to_beginning(tp)
            task.position.pop(tp, None)
        else:
            self.consumer.seek(tp, committed)
            task.position[tp] = committed

    async def _commit_all(self) -> None:
        for task in list(self.tasks.values()):
            if task.committing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task.committing), CLOSE_COMMIT_WAIT)
        for task in list(self.tasks.values()):
            if task.committing is not None:
                # Still committing after the wait (a hung broker request): left as it is; the
                # assignment that follows closes the task and aborts it.
                log.warning("partition %s: its commit did not end within %g s", task.partition, CLOSE_COMMIT_WAIT)
                continue
            if task.ready and (task.backlog or task.local):
                await self._step(task)
            if task.ready and (
                task.dirty or task.sends or task.deferred
            ):  # a task being restored has nothing to commit
                await self._commit(task)

    # --- rebalances and recovery --------------------------------------------------

    async def on_revoked(self) -> None:
        """Before the group rebalances: commit what is handled, stop the effects of every task."""
        async with self._lock:
            self.rebalancing = True
            self._check_frozen()
            if self.frozen:
                # Expired while frozen: the partitions are another worker's by now, and so is the
                # work held since (handled and committed here, it would be done twice).
                log.info("revoked after a freeze: nothing held is handled or committed here")
                return
            await self._commit_all()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """After the group rebalanced: close lost tasks, open and recover new ones."""
        async with self._lock:
            before = self.cluster_id
            with contextlib.suppress(Exception):  # unanswered: the id read before stands
                # Asked again at every assignment: a broker replaced by a new cluster under the same
                # address makes its workers rejoin, and checkpoints and the workers' internal token
                # must name the cluster they now talk to (probe 24: a worker that lived through the
                # swap kept the old id, and its peers refused its calls for ever).
                self.cluster_id = await asyncio.wait_for(self._read_cluster_id(), 10) or self.cluster_id
            numbers = {tp.partition for tp in assigned}
            generation = self._group_generation()
            missed = generation is not None and self.generation is not None and generation != self.generation + 1
            missed = missed or bool(before and self.cluster_id != before)  # another cluster: nothing kept
            self.generation = generation
            if missed and self.tasks:
                # Frozen past the session, this worker was left out of a rebalance: another worker
                # may have owned these partitions meanwhile (its producers fenced ours, its commits
                # moved the offsets and changelogs past this task's). Nothing held is kept.
                log.warning(
                    "rejoined the group after missing a rebalance (generation %s): partitions %s are "
                    "restored from their changelogs and read from their committed offsets",
                    generation,
                    sorted(self.tasks),
                )
            for p, task in list(self.tasks.items()):
                if p not in numbers or not task.ready or missed:
                    await self._close_task(task)
            new = [p for p in sorted(numbers) if p not in self.tasks]
            opened = await asyncio.gather(*(self._open_task(p) for p in new))
            for task in opened:
                self.tasks[task.partition] = task
            await self._recover_assigned([self.tasks[p] for p in sorted(numbers)])
            assert self.consumer is not None
            for tp in assigned:
                task = self.tasks[tp.partition]
                if tp in task.position:
                    self.consumer.seek(tp, task.position[tp])  # a kept task goes on where it was
                    task.fetched[tp] = task.position[tp]
                    task.read_to.pop(tp, None)  # read up to there again before its timers act (review)
                    # Read again from there: what was fetched and not handled (held through a freeze,
                    # whose revocation drained nothing) would be handled twice.
                    task.backlog = deque((btp, records) for btp, records in task.backlog if btp != tp)
            self.assigned = True
            self.rebalancing = False
            self.frozen = False
            log.info("serving partitions %s", sorted(numbers))
        self._wakeup.set()

    async def _recover_assigned(self, tasks: list[Task]) -> None:
        """Recover what was assigned, up to :data:`RECOVER_ATTEMPTS` times; then stop this worker.

        aiokafka does not call the listener again when it fails: a restore that raised (a broker
        hiccup, a stalled read) would leave the partitions assigned here and never served. A
        database that cannot be replaced (``StoreError`` past :meth:`_recover`'s own attempts)
        is not tried again: the worker stops at once.
        """
        for attempt in itertools.count(1):
            try:
                await self._recover(tasks)
                return
            except Exception as exc:
                partitions = [t.partition for t in tasks]
                if self._stopping:
                    raise
                if isinstance(exc, StoreError) or attempt >= RECOVER_ATTEMPTS:
                    self._stop_for(f"partitions {partitions}: restoring them from their changelogs failed ({exc})")
                    raise
                log.error(
                    "partitions %s: restoring them from their changelogs failed (attempt %d of %d, trying again): %s",
                    partitions,
                    attempt,
                    RECOVER_ATTEMPTS,
                    exc,
                    exc_info=attempt == 1,
                )
                await asyncio.sleep(RETRY_AFTER)
                if self._stopping:
                    raise

    def _group_generation(self) -> int | None:
        """The consumer group generation this assignment belongs to (aiokafka's coordinator holds it)."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        generation = getattr(coordinator, "generation", None)
        return generation if isinstance(generation, int) and generation >= 0 else None

    async def _open_task(self, partition: int) -> Task:
        db = self.dbs.get(partition)
        if db is None:
            try:
                db = open_or_discard(self.datadir / f"p{partition}.rocksdb", partition, self.indexer)
            except InUseError as exc:
                self._stop_for(str(exc))  # another worker's: this one has no business with the directory
                raise
            except Exception as exc:
                # Neither the database nor a fresh one opens (the directory is unusable: a file in
                # its place, no permission, a read-only disk): holding the partition would stall it.
                self._stop_for(f"partition {partition}: cannot open a database in {self.datadir} ({exc})")
                raise
            self.dbs[partition] = db
        producer = await self._transactional_producer(partition)
        return Task(partition, Step(partition, db), producer)

    async def _transactional_producer(self, partition: int) -> AIOKafkaProducer:
        """The partition's transactional producer, started: it fences the previous one, aborts its open transaction."""
        return await self._producer(transactional_id=f"{self.app_id}-task-{partition}")

    async def _producer(self, transactional_id: str | None = None) -> AIOKafkaProducer:
        """An idempotent producer (transactional with ``transactional_id``), started."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            transactional_id=transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
        )
        try:
            await producer.start()
        except BaseException:
            # One that did not start still holds a client that keeps trying the broker (and
            # logging each try): with the broker down, every refused request left one more.
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def _close_task(self, task: Task) -> None:
        task.closed = True  # a commit still in flight must not reset it (a new producer would fence the new owner)
        self._failing.pop(task.partition, None)  # if it comes back, its failures count from then
        if task.committing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task.committing), CLOSE_COMMIT_WAIT)
        for job in list(task.effects):
            job.cancel()
        for fut in task.sends:
            fut.cancel()
        # Neither the abort nor the stop may hold the rebalance for ever (probe 24: a producer
        # whose commit hung across a broker replaced by a new cluster never answered its abort;
        # the worker stood silent, not ready, and the group dropped it).
        if task.in_txn:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task.producer.abort_transaction(), CLOSE_COMMIT_WAIT)
        stopping = asyncio.ensure_future(task.producer.stop())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(stopping), CLOSE_COMMIT_WAIT)  # past it, it ends in the background
        self.tasks.pop(task.partition, None)

    async def _recover(self, tasks: list[Task]) -> None:
        """Bring each task's database to the end of its changelogs (read_committed).

        A store is kept only if its checkpoint was written against this cluster and this
        changelog topic and lies within the changelog's retained range; otherwise it is
        discarded and rebuilt from the changelog (Kafka Streams' checkpoint rule), with
        one log line saying which and why.
        """
        from app.engine.recovery import restore

        todo = [t for t in tasks if not t.ready]
        if not todo:
            return
        for attempt in itertools.count(1):
            try:
                await restore(self, todo)
                break
            except StoreError as exc:  # a damaged database: start it anew, every record is in its changelogs
                task = next((t for t in todo if t.partition == exc.partition), None)
                if task is None or attempt > len(todo):
                    raise
                self._replace_db(task, str(exc))
        for task in todo:
            task.ready = True
            task.replay, task.replay_unknown, task.read_to = None, True, {}


def _stop_this_process(reason: str) -> None:
    """Stop the worker as SIGTERM does: commit what can be, leave the group, exit."""
    os.kill(os.getpid(), signal.SIGTERM)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.engine.on_revoked()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.engine.on_assigned(set(assigned))


def dead_letter_payload(stage: str, record: Record, error: BaseException, max_error: int = 2000) -> dict[str, Any]:
    """The fields of a dead letter for ``record`` (see :mod:`app.engine.dead_letters`)."""
    text = f"{type(error).__name__}: {error}"
    stack = traceback.format_exception(type(error), error, error.__traceback__, limit=4)
    return {
        "stage": stage,
        "error": text if len(text) <= max_error else text[: max_error - 1] + "…",
        "stack": "".join(stack)[-2000:],
        "source_topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
