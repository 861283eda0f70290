"""Writing a dead letter never fails, and a step that fails outside its handlers loses nothing.

Probe 17: a message nested 300 levels deep on an input topic. orjson reads 1,024 levels
and writes 254, so the letter about it could not be written: the exception left the step
with the rest of its fetched records unhandled, and the offsets of the records fetched
after them committed over them (three valid orders behind it were never placed).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from app.bench.steps import PlainRecord
from app.engine.dead_letters import dead_letter
from app.engine.runtime import Engine, Task
from app.engine.step import Step
from app.engine.store import PartitionDB
from schemas.catalogue import RECORDS
from schemas.payloads import PayloadError, check
from tests.support import offline_engine

DEEP = b"[" * 300 + b"]" * 300


def _record(topic: str, value: bytes, offset: int = 7) -> Any:
    return PlainRecord(topic, 3, offset, b"k", value, [])


def test_a_message_too_deep_to_write_again_is_kept_as_text() -> None:
    value = b'{"id": "x", "type": "nope", "deep": ' + DEEP + b"}"
    orjson.loads(value)  # orjson reads it
    topic, _, letter_bytes = dead_letter("orders", _record("a.orders", value), ValueError("unknown type"))
    letter = orjson.loads(letter_bytes)
    assert topic == "a.orders.dlq"
    assert letter["payload"]["original_kind"] == "text"
    assert letter["payload"]["original"] == value.decode()
    assert letter["payload"]["source_topic"] == "a.orders" and letter["payload"]["offset"] == 7


def test_a_failure_on_a_dead_letter_topic_stays_on_it() -> None:
    topic, _, _ = dead_letter("dead_letters", _record("a.orders.dlq", b"{}"), ValueError("x"))
    assert topic == "a.orders.dlq"  # nothing reads a .dlq.dlq


@pytest.mark.parametrize(
    "payload",
    [
        {"error": "forged"},  # no source_topic: GET /dlq and redrive read it
        {"stage": "orders", "error": "e", "source_topic": "a.orders", "partition": 0, "offset": 1, "key": 5},
        {"stage": "orders", "error": "e", "source_topic": "", "partition": 0, "offset": 1},
    ],
)
def test_a_letter_missing_what_listing_and_redrive_read_is_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        check(RECORDS["event.processing.failed"], payload)


def test_the_letters_the_engine_writes_pass_the_record() -> None:
    for value in (b"not json", b'{"id": "x"}', DEEP):
        _, _, letter_bytes = dead_letter("orders", _record("a.orders", value), ValueError("e"))
        check(RECORDS["event.processing.failed"], orjson.loads(letter_bytes)["payload"])


def test_a_step_that_fails_outside_its_handlers_reads_its_inputs_again(tmp_path: Path) -> None:
    engine: Engine = offline_engine(tmp_path, partitions=4)
    task = Task(2, Step(2, PartitionDB(tmp_path / "p2.rocksdb", 2)), None)  # type: ignore[arg-type]
    task.ready = True
    engine.tasks[2] = task
    engine.rebalancing = False  # assigned
    tp = TopicPartition("t.orders", 2)
    handled: list[int] = []
    reset: list[int] = []

    async def handle(task: Task, logical: str, record: Any) -> None:
        if record.offset == 10:
            raise TypeError("Recursion limit reached")  # as writing the letter about it did
        handled.append(record.offset)

    async def fake_reset(task: Task, *, fenced: bool = False) -> None:
        reset.append(task.partition)
        task.backlog.clear()

    engine._handle = handle  # type: ignore[method-assign]
    engine._reset = fake_reset  # type: ignore[method-assign]
    records = [_record("t.orders", b"{}", offset) for offset in (10, 11, 12)]
    asyncio.run(engine._cycle({tp: records}))
    assert reset == [2]  # read again from the last commit, not skipped
    assert handled == []
    assert tp not in task.position  # nothing past offset 10 counts as handled


def test_a_failed_step_sends_every_input_of_the_partition_back_to_its_committed_offset(tmp_path: Path) -> None:
    """Review: the reset rewound only the inputs the task had handled since its assignment; a
    fetched batch of another was dropped unread (and a stale fetch of it sent that input to the
    beginning of its log, read whole again)."""
    from aiokafka.structs import ConsumerRecord

    class Producer:
        async def stop(self) -> None:
            pass

    orders, payments = TopicPartition("t.orders", 2), TopicPartition("t.payments", 2)

    class Consumer:
        def __init__(self) -> None:
            self.log: list[tuple[str, str, int | None]] = []

        def assignment(self) -> set[TopicPartition]:
            return {orders, payments, TopicPartition("t.orders", 3)}

        async def committed(self, tp: TopicPartition) -> int:
            return 10

        def seek(self, tp: TopicPartition, offset: int) -> None:
            self.log.append(("seek", tp.topic, offset))

        async def seek_to_beginning(self, tp: TopicPartition) -> None:
            self.log.append(("seek_to_beginning", tp.topic, None))

    engine: Engine = offline_engine(tmp_path, partitions=4)
    consumer = Consumer()
    engine.consumer = consumer  # type: ignore[assignment]
    engine._next_timer = 1e18

    async def producer(partition: int) -> Any:
        return Producer()

    async def recover(tasks: list[Task]) -> None:
        for task in tasks:
            task.ready = True

    def unwritable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the dead letter could not be written")

    def refuse(step: Any, env: Any) -> None:
        raise ValueError("the handler refuses it")

    engine._transactional_producer = producer  # type: ignore[method-assign]
    engine._recover = recover  # type: ignore[method-assign]
    engine.dead_letter = unwritable
    engine.route("s", "orders", {"x"}, refuse)
    engine.route("s", "payments", {"x"}, lambda step, env: None)
    task = Task(2, Step(2, PartitionDB(tmp_path / "p2.rocksdb", 2)), Producer())  # type: ignore[arg-type]
    task.ready = True
    engine.tasks[2] = task
    engine.assigned, engine.rebalancing = True, False

    def record(tp: TopicPartition, offset: int) -> Any:
        value = b'{"type": "x", "id": "e%d"}' % offset
        return ConsumerRecord(tp.topic, 2, offset, 0, 0, None, value, None, 0, 0, [])

    batch = {payments: [record(payments, 10), record(payments, 11)], orders: [record(orders, 10), record(orders, 11)]}
    asyncio.run(engine._cycle(batch, fetched_at=0.0))
    assert sorted(consumer.log) == [("seek", "t.orders", 10), ("seek", "t.payments", 10)]
    task.retry_at = 0
    asyncio.run(engine._cycle({orders: [record(orders, 12)]}, fetched_at=task.reset_at - 0.001))  # fetched before it
    assert ("seek_to_beginning", "t.orders", None) not in consumer.log


def test_a_step_that_fails_on_a_fenced_producer_starts_no_new_one(tmp_path: Path) -> None:
    """Review: the partition had moved and its new owner's producer fenced this one; a new producer
    with the same transactional id would have fenced the new owner in turn."""
    from types import SimpleNamespace

    from aiokafka.errors import IllegalStateError

    engine: Engine = offline_engine(tmp_path, partitions=4)
    fenced = SimpleNamespace(_txn_manager=SimpleNamespace(is_fatal_error=lambda: True))
    task = Task(2, Step(2, PartitionDB(tmp_path / "p2.rocksdb", 2)), fenced)  # type: ignore[arg-type]
    engine.tasks[2] = task
    resets: list[bool] = []

    async def reset(task: Task, *, fenced: bool = False) -> None:
        resets.append(fenced)

    engine._reset = reset  # type: ignore[method-assign]
    asyncio.run(engine._abandon_step(task, IllegalStateError("begin_transaction on a fenced producer")))
    assert resets == [True]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"K" * 990_000, b"junk"),  # a key of most of a MiB
        (b"k", orjson.dumps({"id": "A" * 900_000, "type": "x"})),  # an id of most of a MiB
        (b"k", orjson.dumps({"id": "x", "correlation_id": "C" * 600_000, "pad": "p" * 300_000})),
    ],
)
def test_a_letter_fits_a_record_whatever_the_key_and_ids_of_its_message(key: bytes, value: bytes) -> None:
    """Probe 23: the letter copied the key and the original's ids whole, could not be sent
    (RecordTooLarge), and the partition read the same message again for ever."""
    from app.engine.dead_letters import redrivable
    from app.engine.step import MAX_RECORD_BYTES

    record = PlainRecord("a.analytics", 6, 9, key, value, [])
    _, dl_key, letter_bytes = dead_letter("analytics", record, ValueError("e"))
    assert len(dl_key) + len(letter_bytes) < MAX_RECORD_BYTES
    letter = orjson.loads(letter_bytes)
    check(RECORDS["event.processing.failed"], letter["payload"])
    assert len(letter["payload"]["key"]) <= 1024
    assert letter["causation_id"] is None or len(letter["causation_id"]) <= 256
    assert len(letter["correlation_id"]) <= 256
    if len(key) > 1024:
        assert letter["payload"]["key_truncated"] and not redrivable(letter["payload"])


def test_a_key_that_is_not_utf8_is_kept_readable_but_never_redriven_under_another_key() -> None:
    """Probe 23: the key was stored with replacement characters and a redrive would have sent
    the original under that other key (another partition)."""
    from app.engine.dead_letters import redrivable

    _, _, letter_bytes = dead_letter(
        "orders", PlainRecord("a.orders", 1, 2, b"\xff\xfeok", b"junk", []), ValueError("e")
    )
    payload = orjson.loads(letter_bytes)["payload"]
    assert payload["key"] == "\ufffd\ufffdok" and payload["key_truncated"] is True
    assert not redrivable(payload)
    _, _, letter_bytes = dead_letter("orders", PlainRecord("a.orders", 1, 2, b"o-1", b"junk", []), ValueError("e"))
    payload = orjson.loads(letter_bytes)["payload"]
    assert payload["key"] == "o-1" and "key_truncated" not in payload and redrivable(payload)


@pytest.mark.parametrize("moved", [False, True])
def test_a_fenced_task_no_rebalance_takes_away_is_taken_back(tmp_path: Path, moved: bool) -> None:
    """Probe 23: a producer outside the group with a task's transactional id fenced it; the task
    waited for a rebalance that never came and its partition answered 503 until a restart."""
    from types import SimpleNamespace

    engine: Engine = offline_engine(tmp_path, partitions=4)
    engine.fence_grace = 0.05
    engine.rebalancing = False  # assigned, and no rebalance follows
    task = Task(2, Step(2, PartitionDB(tmp_path / "p2.rocksdb", 2)), SimpleNamespace())  # type: ignore[arg-type]
    task.ready = True
    engine.tasks[2] = task
    fenced_reset = engine._reset
    resets: list[bool] = []

    async def reset(task: Task, *, fenced: bool = False) -> None:
        resets.append(fenced)
        if fenced:
            await fenced_reset(task, fenced=True)

    engine._reset = reset  # type: ignore[method-assign]

    async def scenario() -> None:
        await engine._reset(task, fenced=True)
        assert not task.ready
        if moved:  # the rebalance that moved the partition closed the task
            task.closed = True
        await asyncio.gather(*engine._bg)  # the reclaim, after its grace, and what it started

    asyncio.run(scenario())
    assert resets == ([True] if moved else [True, False])


#: The one input of the tasks :func:`_resettable` makes; its committed offset is 10.
RESET_TP = TopicPartition("t.orders", 2)


def _resettable(tmp_path: Path, gate: asyncio.Event | None = None) -> tuple[Engine, Task]:
    """An offline engine holding a ready task of partition 2 that ``_reset`` can run on: its
    consumer says offset 10 is committed on :data:`RESET_TP` (once ``gate`` is set, when given),
    new producers are stubs and a restore only marks the task ready, as the real one ends."""

    class Producer:
        async def stop(self) -> None:
            pass

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return {RESET_TP}

        async def committed(self, tp: TopicPartition) -> int:
            if gate is not None:
                await gate.wait()  # the loop runs meanwhile
            return 10

        def seek(self, tp: TopicPartition, offset: int) -> None:
            pass

    async def producer(partition: int) -> Any:
        return Producer()

    async def recover(tasks: list[Task]) -> None:
        for t in tasks:
            t.ready = True

    engine: Engine = offline_engine(tmp_path, partitions=4)
    engine.consumer = Consumer()  # type: ignore[assignment]
    engine.rebalancing = False
    engine._transactional_producer = producer  # type: ignore[method-assign]
    engine._recover = recover  # type: ignore[method-assign]
    task = Task(2, Step(2, PartitionDB(tmp_path / "p2.rocksdb", 2)), Producer())  # type: ignore[arg-type]
    task.ready = True
    engine.tasks[2] = task
    return engine, task


def _consumer_record(offset: int, value: bytes) -> Any:
    from aiokafka.structs import ConsumerRecord

    return ConsumerRecord(RESET_TP.topic, 2, offset, 0, 0, None, value, None, 0, 0, [])


def test_a_batch_fetched_while_a_failed_commit_rewinds_is_not_taken_and_nothing_is_skipped(tmp_path: Path) -> None:
    """Probe 24: after a failed commit the task was ready again (restored) before the consumer was
    sent back; the loop took a batch from the old, further position meanwhile, and the records
    read again from the committed offset were then dropped as already handled: orders lost,
    stuck in ``paid``, stock left reserved."""
    gate = asyncio.Event()
    engine, task = _resettable(tmp_path, gate)
    engine._next_timer = 1e18
    engine.commit_interval = 1e9  # no commit of the records handled: only the reset is looked at
    handled: list[int] = []

    async def handle(task: Task, logical: str, record: Any) -> None:
        handled.append(record.offset)

    engine._handle = handle  # type: ignore[method-assign]

    def records(*offsets: int) -> list[Any]:
        return [_consumer_record(o, b"{}") for o in offsets]

    async def scenario() -> None:
        reset = asyncio.create_task(engine._reset(task))
        for _ in range(5):
            await asyncio.sleep(0)  # the reset waits for the committed offsets
        # The loop fetched on from the old position meanwhile.
        await engine._cycle({RESET_TP: records(12, 13)}, fetched_at=time.monotonic())
        gate.set()
        await reset
        task.retry_at = 0
        await engine._cycle({RESET_TP: records(10, 11, 12, 13)}, fetched_at=time.monotonic())
        await asyncio.gather(*engine._bg)  # the old producer's stop, in the background

    asyncio.run(scenario())
    assert handled == [10, 11, 12, 13]


def test_closing_a_task_whose_producer_never_answers_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 24: the abort of a task's transaction, on a producer whose commit had hung across a
    broker replaced by a new cluster, never returned: the rebalance listener stood for ever."""
    from app.engine import runtime

    class Hung:
        async def abort_transaction(self) -> None:
            await asyncio.Event().wait()

        async def stop(self) -> None:
            await asyncio.Event().wait()

    monkeypatch.setattr(runtime, "CLOSE_COMMIT_WAIT", 0.05)
    engine: Engine = offline_engine(tmp_path, partitions=4)
    task = Task(2, Step(2, PartitionDB(tmp_path / "p2.rocksdb", 2)), Hung())  # type: ignore[arg-type]
    task.in_txn = True
    engine.tasks[2] = task

    async def scenario() -> None:
        task.committing = asyncio.create_task(asyncio.Event().wait())  # a commit that never ends
        await asyncio.wait_for(engine._commit_all(), 2)  # the revocation's commit goes past it
        await asyncio.wait_for(engine._close_task(task), 2)
        task.committing.cancel()

    asyncio.run(scenario())
    assert 2 not in engine.tasks


def test_a_send_the_broker_never_takes_fails_within_the_produce_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe 24: with the broker down, POST /orders answered 503 only after the producer's own
    40 s; a client with a shorter timeout got no answer at all."""
    from aiokafka.errors import KafkaTimeoutError

    from app.engine import runtime

    class Stalled:
        async def send(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.Event().wait()  # waiting for the broker's metadata, for ever

    monkeypatch.setattr(runtime, "PRODUCE_WAIT", 0.05)
    engine: Engine = offline_engine(tmp_path, partitions=4)
    engine.producer = Stalled()  # type: ignore[assignment]
    with pytest.raises(KafkaTimeoutError):
        asyncio.run(asyncio.wait_for(engine.produce("orders", "o1", b"{}"), 2))
    assert isinstance(engine.producer, Stalled)  # a timeout is not a broken producer: kept


def test_placing_on_a_worker_whose_engine_is_not_started_is_a_503_not_a_500(tmp_path: Path) -> None:
    """Probe 25: for ~2 s after a worker's web port opened, POST /orders without an
    Idempotency-Key answered 500 (an assertion: the engine not started yet)."""
    from app.web import api, routing

    engine: Engine = offline_engine(tmp_path, partitions=4)
    with pytest.raises(KafkaError):
        asyncio.run(engine.produce("orders", "o1", b"{}"))
    assert api.engine.producer is None  # the app's engine, never started in unit tests
    env = {"id": "e1", "type": "order.placed", "payload": {}}
    with pytest.raises(routing.Unavailable):  # the edge's 503 with Retry-After
        asyncio.run(api.produce("orders", "o1", env))  # type: ignore[arg-type]


def test_the_cluster_id_is_read_again_at_every_assignment(tmp_path: Path) -> None:
    """Probe 24: a worker that lived through its broker's replacement by a new cluster kept the
    old id: its checkpoints named that cluster and its peers refused its internal calls."""
    engine: Engine = offline_engine(tmp_path, partitions=4)
    engine.cluster_id = "old-cluster"

    async def read() -> str:
        return "new-cluster"

    async def recover(tasks: list[Task]) -> None:
        pass

    engine._read_cluster_id = read  # type: ignore[method-assign]
    engine._recover_assigned = recover  # type: ignore[method-assign]
    engine.consumer = object()  # type: ignore[assignment]
    asyncio.run(engine.on_assigned(set()))
    assert engine.cluster_id == "new-cluster"


def test_a_step_overtaken_by_a_reset_drops_what_it_did_after_it(tmp_path: Path) -> None:
    """Review: a failed commit's reset (in the background) ran while a handler of the next step
    awaited; the step then went on into the fresh state, moved the position past the rewind and
    marked the task dirty, so the next commit skipped the records read again."""
    go_on = asyncio.Event()
    engine, task = _resettable(tmp_path)

    async def slow(step: Step, env: Any) -> None:
        await go_on.wait()  # e.g. a notifier's SMTP round trip
        step.put("s", f"k{env['id']}", 1)
        step.send("t.out", b"k", b"{}", [])

    engine.route("s", "orders", {"x"}, slow)

    def record(offset: int) -> Any:
        return _consumer_record(offset, b'{"type": "x", "id": "e%d"}' % offset)

    async def scenario() -> None:
        task.backlog.append((RESET_TP, [record(10), record(11)]))
        step = asyncio.create_task(engine._step(task))
        await asyncio.sleep(0)  # the handler of offset 10 awaits
        await engine._reset(task)  # a failed commit's, in the background
        assert task.position[RESET_TP] == 10 and task.ready
        go_on.set()
        await step

    asyncio.run(scenario())
    assert task.position[RESET_TP] == 10  # not moved past the rewind
    assert not task.dirty and not task.step.overlay and not task.step.outputs


def test_a_reset_whose_new_producer_cannot_start_yet_tries_again_and_raises_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe 25: with the broker down, a failed commit's reset could not start its new producer;
    the error escaped the commit task ("Task exception was never retrieved") and left the task
    not ready, its old producer stopped, until a rebalance happened to reopen it."""
    from aiokafka.errors import KafkaConnectionError

    from app.engine import runtime

    monkeypatch.setattr(runtime, "RETRY_AFTER", 0.01)
    engine, task = _resettable(tmp_path)
    started: list[object] = []

    class Producer:
        async def stop(self) -> None:
            pass

    async def producer(partition: int) -> Any:
        if len(started) < 2:
            started.append(None)
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")
        fresh = Producer()
        started.append(fresh)
        return fresh

    engine._transactional_producer = producer  # type: ignore[method-assign]
    asyncio.run(engine._reset(task))
    assert task.ready and task.producer is started[-1] and len(started) == 3
