"""A partition taken away while its commit runs: nothing starts, the commit ends first, nothing fences the new owner.

Seen in CI (the paused-worker test): the engine started a commit between a revocation
and the assignment that followed; closing the lost task aborted the transaction under
it, the commit failed, and its reset started a new transactional producer for the
partition — which fenced the worker that now owned it, leaving the partition stalled.
The engine's own methods run here over a real partition database, with a stand-in
producer that records what was asked of it (no broker: these are the engine's rules).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from app.engine.runtime import Engine, Task
from app.engine.step import Step
from app.engine.store import PartitionDB
from tests.support import eventually_async, offline_engine


class _Producer:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def abort_transaction(self) -> None:
        self.log.append("abort")

    async def stop(self) -> None:
        self.log.append("stop")


def _engine(tmp_path: Path) -> Engine:
    return offline_engine(tmp_path, partitions=4)  # type: ignore[no-any-return]


def _task(tmp_path: Path, log: list[str]) -> Task:
    db = PartitionDB(tmp_path / "p2.rocksdb", 2)
    task = Task(2, Step(2, db), _Producer(log))  # type: ignore[arg-type]
    task.ready = True
    return task


def test_no_commit_starts_between_a_revocation_and_the_assignment(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    task = _task(tmp_path, [])
    engine.tasks[2] = task
    task.dirty = True
    engine.rebalancing = True

    async def cycle() -> bool:
        await engine._cycle({})
        started = task.committing is not None
        if task.committing is not None:
            task.committing.cancel()
        return started

    assert not asyncio.run(cycle())
    engine.rebalancing = False  # and once assigned, it does
    assert asyncio.run(cycle())


def test_closing_waits_for_the_commit_in_flight_and_a_revoked_task_is_not_reset(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    log: list[str] = []
    task = _task(tmp_path, log)
    engine.tasks[2] = task
    started: list[Any] = []

    async def fresh_producer(partition: int) -> Any:
        started.append(partition)  # would fence the partition's new owner
        return _Producer(log)

    engine._transactional_producer = fresh_producer  # type: ignore[method-assign]

    async def scenario() -> None:
        async def commit() -> None:
            await asyncio.sleep(0.05)
            log.append("commit failed")
            await engine._reset(task)  # what a failed commit does

        task.in_txn = True
        task.committing = asyncio.create_task(commit())
        await engine._close_task(task)

    asyncio.run(scenario())
    assert log[:1] == ["commit failed"]  # the close waited for the commit before aborting
    assert log[1:] == ["abort", "stop"]
    assert started == []  # the revoked task was not reset: no new producer for its partition
    assert 2 not in engine.tasks


def test_after_a_freeze_past_the_session_nothing_is_stepped_until_the_group_answers(tmp_path: Path) -> None:
    """Frozen (SIGSTOP) long enough for the group to expire it, a worker handled what it had fetched
    before the freeze at once: under at-least-once confirmations the new owner had sent went out
    again (CI). It now holds every partition until the overdue heartbeat tells: revoked, it hands
    nothing on; not expired, it goes on after the hold."""
    import time

    engine = _engine(tmp_path)
    log: list[str] = []
    task = _task(tmp_path, log)
    engine.tasks[2] = task
    engine.assigned, engine.rebalancing = True, False
    stepped: list[int] = []

    async def step(task: Task) -> None:
        stepped.append(task.partition)
        task.backlog.clear()

    async def commit_all() -> None:
        log.append("commit_all")

    engine._step = step  # type: ignore[method-assign]
    engine._commit_all = commit_all  # type: ignore[method-assign]
    engine._last_tick = time.monotonic() - engine.session_timeout_ms / 1000  # the process stood still
    engine._check_frozen()
    assert engine.frozen
    task.backlog.append(("tp", ["fetched before the freeze"]))  # type: ignore[arg-type]
    asyncio.run(engine._cycle({}))
    assert stepped == []  # held
    asyncio.run(engine.on_revoked())  # expired: the rejoin revokes
    assert "commit_all" not in log and stepped == []

    engine.rebalancing, engine.frozen = False, True  # not expired after all: the hold ends
    engine._hold_until = time.monotonic() - 1
    asyncio.run(engine._cycle({}))
    assert not engine.frozen and stepped == [2]


def test_what_a_kept_partition_held_through_a_freeze_is_read_again_once(tmp_path: Path) -> None:
    """Review: frozen but not expired, the worker's revocation drained nothing; the partition was
    kept, the consumer sent back to where the task stood, and the held records were handled from
    the backlog and again from the fetch."""
    import time
    from types import SimpleNamespace

    from aiokafka.structs import ConsumerRecord

    class Consumer:
        def __init__(self) -> None:
            self._coordinator = SimpleNamespace(generation=5)

        def seek(self, tp: TopicPartition, offset: int) -> None:
            pass

    def record(offset: int) -> Any:
        value = b'{"type": "x", "id": "e%d"}' % offset
        return ConsumerRecord("t.orders", 2, offset, 0, 0, None, value, None, 0, 0, [])

    engine = _engine(tmp_path)
    engine.consumer = Consumer()  # type: ignore[assignment]
    engine._next_timer = 1e18
    seen: list[str] = []
    engine.route("s", "orders", {"x"}, lambda step, env: seen.append(env["id"]))
    task = _task(tmp_path, [])
    engine.tasks[2] = task
    engine.assigned, engine.rebalancing, engine.generation = True, False, 4
    orders = TopicPartition("t.orders", 2)

    async def scenario() -> None:
        await engine._cycle({orders: [record(8), record(9)]})
        if task.committing is not None:
            task.committing.cancel()
        engine._last_tick = time.monotonic() - 9.0  # 9 s of a 10 s session: maybe expired
        engine._check_frozen()
        await engine._cycle({orders: [record(10), record(11)]})  # taken in, held
        await engine.on_revoked()
        await engine.on_assigned({orders})  # not expired: generation 5, the partition kept
        await engine._cycle({orders: [record(10), record(11)]}, fetched_at=time.monotonic())
        if task.committing is not None:
            task.committing.cancel()

    asyncio.run(scenario())
    assert seen == ["e8", "e9", "e10", "e11"]


def test_a_partition_unassigned_while_the_lag_is_sampled_breaks_no_cycle(tmp_path: Path) -> None:
    """aiokafka's ``highwater`` asserts the partition is assigned: a rebalance starting while the
    lag was sampled failed the whole cycle with a traceback (probe 22)."""

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return {TopicPartition("t.orders", 2)}

        def highwater(self, tp: TopicPartition) -> int:
            raise AssertionError("Partition is not assigned")

    engine = _engine(tmp_path)
    engine.consumer = Consumer()  # type: ignore[assignment]
    engine.tasks[2] = _task(tmp_path, [])
    asyncio.run(engine._publish_metrics())


def test_a_failed_restore_of_an_assignment_is_tried_again_then_stops_the_worker(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """aiokafka never calls a failed rebalance listener again: a restore that raised left the
    partitions assigned and never served (probe 21). It is tried again a bounded number of times,
    not once more after a stop began, and then the worker stops (review)."""
    from app.engine import runtime

    monkeypatch.setattr(runtime, "RETRY_AFTER", 0.0)
    engine = _engine(tmp_path)
    stopped: list[str] = []
    engine._give_up = stopped.append  # type: ignore[method-assign]
    calls: list[int] = []

    def failing(times: int) -> Any:
        async def recover(tasks: list[Task]) -> None:
            calls.append(1)
            if len(calls) <= times:
                raise RuntimeError("restoring made no progress")

        return recover

    engine._recover = failing(2)  # type: ignore[method-assign]
    asyncio.run(engine._recover_assigned([]))
    assert len(calls) == 3 and stopped == []

    calls.clear()
    engine._recover = failing(99)  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        asyncio.run(engine._recover_assigned([]))
    assert len(calls) == runtime.RECOVER_ATTEMPTS and len(stopped) == 1

    calls.clear()
    engine._gave_up = False

    async def stop_meanwhile(tasks: list[Task]) -> None:
        calls.append(1)
        engine._stopping = True
        raise RuntimeError("broker gone")

    engine._recover = stop_meanwhile  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        asyncio.run(engine._recover_assigned([]))
    assert len(calls) == 1 and len(stopped) == 1


def test_a_commit_landing_after_its_task_was_closed_and_reopened_leaves_the_new_task_s_state_alone(
    tmp_path: Path,
) -> None:
    """Review (twelfth session): closing a task waits 10 s for its commit, then goes on; a commit
    that landed later applied the old task's writes to the database the reopened task shares,
    over what the new task had restored and written since."""
    from types import SimpleNamespace

    gate = asyncio.Event()

    class Producer:
        def create_batch(self) -> Any:
            return SimpleNamespace(append=lambda **kw: object())

        async def begin_transaction(self) -> None:
            pass

        async def send_batch(self, batch: Any, topic: str, partition: int) -> Any:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(SimpleNamespace(offset=41))
            return done

        async def send_offsets_to_transaction(self, offsets: Any, group: str) -> None:
            pass

        async def commit_transaction(self) -> None:
            await gate.wait()  # answered only after the close gave up waiting

    engine = _engine(tmp_path)
    engine.store("s")
    db = PartitionDB(tmp_path / "p2.rocksdb", 2)
    old = Task(2, Step(2, db), Producer())  # type: ignore[arg-type]
    old.ready = True
    engine.tasks[2] = old
    old.step.begin("stage", "t", 0, {})
    old.step.put("s", "k", "the old task's")

    async def scenario() -> None:
        committing = asyncio.create_task(engine._commit(old))
        await asyncio.sleep(0)
        old.closed = True  # closed (its wait ran out), then the partition assigned here again
        engine.tasks[2] = new = Task(2, Step(2, db), Producer())  # type: ignore[arg-type]
        db.apply({"s": {"k": ("the new task's", b'"the new task\'s"')}}, {})  # restored, stepped, committed
        new.ready = True
        gate.set()
        await committing

    asyncio.run(scenario())
    assert db.get("s", "k") == "the new task's"
    assert db.checkpoint("s") is None  # nor did the old commit move the checkpoint


def test_a_store_only_a_failed_handler_wrote_sends_no_empty_changelog_batch(tmp_path: Path) -> None:
    """Probe 25: an analytics handler wrote, then failed on its input (dead-lettered, rolled back);
    its store's map stayed in the commit, empty, and the empty batch sent for it was answered
    with no metadata: every commit of the partition failed and read the input again, for ever."""
    from types import SimpleNamespace

    sent: list[int] = []

    class Producer:
        def create_batch(self) -> Any:
            appended: list[object] = []
            return SimpleNamespace(append=lambda **kw: appended.append(kw) or object(), appended=appended)

        async def begin_transaction(self) -> None:
            pass

        async def send_batch(self, batch: Any, topic: str, partition: int) -> Any:
            sent.append(len(batch.appended))
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(SimpleNamespace(offset=41) if batch.appended else None)  # as aiokafka answers
            return done

        async def send_offsets_to_transaction(self, offsets: Any, group: str) -> None:
            pass

        async def commit_transaction(self) -> None:
            pass

    engine = _engine(tmp_path)
    engine.store("s")
    engine.store("failed")
    task = Task(2, Step(2, PartitionDB(tmp_path / "p2.rocksdb", 2)), Producer())  # type: ignore[arg-type]
    task.ready = True
    engine.tasks[2] = task
    resets: list[Task] = []

    async def reset(task: Task, *, fenced: bool = False) -> None:
        resets.append(task)

    engine._reset = reset  # type: ignore[method-assign]
    task.step.begin("stage", "t", 0, {})
    task.step.put("s", "k", 1)
    task.step.begin("stage", "t", 1, {})
    task.step.put("failed", "k", 1)
    task.step.rollback()  # the handler raised after writing
    asyncio.run(engine._commit(task))
    assert resets == [] and sent == [1]
    assert task.step.db.get("s", "k") == 1


def test_a_restored_task_is_replayed_once_it_has_handled_what_its_inputs_held_when_it_was_restored(
    tmp_path: Path,
) -> None:
    """What the saga's timers wait for after a restore (probe 25): the end of each input partition
    at the first tick after it, reached by the consumer (markers included) and handled."""
    import time
    from collections import deque

    from aiokafka.structs import ConsumerRecord

    orders, payments = TopicPartition("t.orders", 2), TopicPartition("t.payments", 2)

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return {orders, payments, TopicPartition("t.orders", 3)}

        async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            assert set(tps) == {orders, payments}  # this task's inputs only
            return {orders: 12, payments: 5}

    engine = _engine(tmp_path)
    engine.consumer = Consumer()  # type: ignore[assignment]
    engine._next_timer = 1e18
    engine.commit_interval, engine.exactly_once = 1e9, False  # no commit: only the replay is looked at
    engine.assigned, engine.rebalancing = True, False
    task = _task(tmp_path, [])
    engine.tasks[2] = task
    task.replay_unknown = True  # as restoring it leaves it
    assert not engine.replayed(task)

    async def look_up() -> None:
        engine._look_up_replays()
        await asyncio.gather(*engine._bg)

    asyncio.run(look_up())
    assert task.replay == {orders: 12, payments: 5} and not engine.replayed(task)
    engine.route("s", "orders", {"x"}, lambda step, env: None)

    def record(offset: int) -> Any:
        return ConsumerRecord("t.orders", 2, offset, 0, 0, None, b'{"type": "x", "id": "e"}', None, 0, 0, [])

    async def cycle(batch: dict[TopicPartition, list[Any]], positions: dict[TopicPartition, int]) -> None:
        await engine._cycle(batch, time.monotonic(), positions)

    task.backlog.append((orders, [record(8)]))  # taken in, not handled
    asyncio.run(cycle({}, {orders: 12, payments: 5}))
    assert task.backlog == deque() and task.position[orders] == 9
    task.backlog.append((orders, [record(9)]))
    assert not engine.replayed(task)  # read to the end, not all handled
    task.backlog.clear()
    task.read_to = {}
    asyncio.run(cycle({orders: [record(9), record(10)]}, {orders: 11, payments: 5}))
    assert not engine.replayed(task)  # offset 11 (a transaction marker, say) not passed yet
    asyncio.run(cycle({}, {orders: 12, payments: 5}))  # the consumer passed the marker
    assert engine.replayed(task) and task.replay is None


class _StubProducer:
    async def stop(self) -> None:
        pass

    async def abort_transaction(self) -> None:
        pass


def _replaying(tmp_path: Path) -> tuple[Engine, Task]:
    engine = _engine(tmp_path)
    engine.assigned, engine.rebalancing = True, False
    task = Task(2, Step(2, PartitionDB(tmp_path / "p2.rocksdb", 2)), _StubProducer())  # type: ignore[arg-type]
    task.ready = True
    engine.tasks[2] = task
    return engine, task


def test_a_slow_lookup_of_the_replay_ends_holds_no_cycle(tmp_path: Path) -> None:
    """Review: the lookup ran inside the cycle, under the loop's lock: a slow broker held every
    partition for up to 5 s a second."""
    import time

    engine, task = _replaying(tmp_path)
    tp = TopicPartition("t.orders", 2)

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return {tp}

        asked = 0

        async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            Consumer.asked += 1
            await asyncio.sleep(3600)  # a leader away, a slow broker
            return {}

    engine.consumer = Consumer()  # type: ignore[assignment]
    engine.commit_interval = 1e9
    task.replay_unknown = True

    async def run() -> float:
        engine._next_timer = 0.0
        started = time.monotonic()
        async with engine._lock:
            await engine._cycle({}, time.monotonic(), {})
        spent = time.monotonic() - started
        await eventually_async(lambda: Consumer.asked, what="the lookup asking the broker, beside the loop")
        assert engine._looking_up_replays and task.replay_unknown
        for job in list(engine._bg):
            job.cancel()
        await asyncio.gather(*engine._bg, return_exceptions=True)
        assert not engine._looking_up_replays  # a cancelled lookup is asked again at the next tick
        return spent

    assert asyncio.run(run()) < 1.0


def test_a_kept_task_still_replaying_reads_its_dropped_backlog_again_before_its_timers_act(tmp_path: Path) -> None:
    """Review: a task kept through a rebalance while it was still reading its inputs again had its
    backlog dropped and the consumer sent back, but kept how far it had read: its timers opened."""
    from aiokafka.structs import ConsumerRecord

    engine, task = _replaying(tmp_path)
    tp = TopicPartition("t.orders", 2)

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return {tp}

        def seek(self, tp: TopicPartition, offset: int) -> None:
            pass

    async def cluster_id() -> str:
        return engine.cluster_id

    engine.consumer = Consumer()  # type: ignore[assignment]
    engine._read_cluster_id = cluster_id  # type: ignore[method-assign]
    task.replay, task.replay_unknown = {tp: 12}, False
    task.position[tp], task.read_to[tp] = 8, 12
    task.backlog.append((tp, [ConsumerRecord("t.orders", 2, o, 0, 0, None, b"{}", None, 0, 0, []) for o in (8, 9)]))
    engine.rebalancing = True
    asyncio.run(engine.on_assigned({tp}))  # kept; its backlog dropped, the consumer back at 8
    assert not engine.replayed(task)


def test_a_reset_waiting_for_a_producer_starts_none_once_a_rebalance_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: the retry loop went on after the revocation; a producer it started then could fence
    the partition's next owner."""
    from app.engine import runtime

    monkeypatch.setattr(runtime, "RETRY_AFTER", 0.05)
    engine, task = _replaying(tmp_path)
    started: list[object] = []
    attempts = [0]

    async def producer(partition: int) -> Any:
        attempts[0] += 1
        if attempts[0] < 4:
            raise ConnectionError("broker away")
        started.append(partition)
        return _StubProducer()

    engine._transactional_producer = producer  # type: ignore[method-assign]

    async def scenario() -> None:
        reset = asyncio.create_task(engine._reset(task))
        await asyncio.sleep(0.08)
        engine.rebalancing = True  # on_revoked ran
        await reset

    asyncio.run(scenario())
    assert started == [] and not task.ready
