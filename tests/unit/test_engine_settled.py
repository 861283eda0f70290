"""``Engine.settled``: when a read that misses may say "not there" (read-your-writes at the HTTP edge).

The engine's view of one partition is set by hand: the broker's end offset, the consumer's
position, what the loop took in (``fetched``) and what is in RocksDB (``landed``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from app.engine.runtime import Engine, Task
from tests.support import offline_engine


class _Offsets:
    def __init__(self, end: int) -> None:
        self.end = end

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, self.end)


class _Consumer:
    def __init__(self, position: int) -> None:
        self.at = position

    async def position(self, tp: TopicPartition) -> int:
        return self.at


def _engine(tmp_path: Path, *, end: int, position: int, fetched: int, landed: int) -> tuple[Engine, Task]:
    engine: Engine = offline_engine(tmp_path, partitions=1)
    tp = TopicPartition("t.orders", 0)
    task = Task(0, None, None, ready=True)  # type: ignore[arg-type]
    task.fetched[tp], task.landed[tp] = fetched, landed
    engine.tasks[0] = task
    engine.consumer = _Consumer(position)  # type: ignore[assignment]
    engine._watermarks = _Offsets(end)  # type: ignore[assignment]
    return engine, task


def _settled(engine: Engine, timeout: float = 0.3) -> tuple[bool, float]:
    started = time.monotonic()
    result = asyncio.run(engine.settled("orders", "any-key", timeout))
    return result, time.monotonic() - started


def test_under_load_everything_before_the_end_landed_is_settled_though_more_was_read(tmp_path: Path) -> None:
    # The consumer has read past the end and the loop took in more than has landed (new
    # records keep coming), but every record before the end is in RocksDB.
    engine, _ = _engine(tmp_path, end=100, position=130, fetched=130, landed=100)
    settled, took = _settled(engine)
    assert settled and took < 0.1


def test_idle_with_markers_after_the_last_record_is_settled(tmp_path: Path) -> None:
    # The last two offsets before the end are transaction markers: never handled, never landed.
    engine, _ = _engine(tmp_path, end=100, position=100, fetched=98, landed=98)
    assert _settled(engine)[0]


def test_a_record_before_the_end_not_landed_is_not_settled(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, end=100, position=100, fetched=100, landed=97)
    assert _settled(engine)[0] is False
    engine2, _ = _engine(tmp_path, end=100, position=90, fetched=90, landed=90)  # not read that far yet
    assert _settled(engine2)[0] is False


def test_a_fetch_that_ended_but_is_not_taken_in_is_not_settled(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, end=100, position=100, fetched=95, landed=95)

    async def check() -> bool:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result({})
        engine._fetch = done  # type: ignore[assignment]  # its records moved the position, not yet in ``fetched``
        return await engine.settled("orders", "any-key", 0.2)

    assert asyncio.run(check()) is False


def test_a_task_resetting_after_a_failed_commit_is_not_settled(tmp_path: Path) -> None:
    # The reset dropped what the task took in (nothing fetched) while the consumer still
    # stands past records that never landed.
    engine, task = _engine(tmp_path, end=100, position=100, fetched=0, landed=90)
    task.fetched.clear()

    class _Resetting(_Consumer):
        async def position(self, tp: TopicPartition) -> int:
            task.ready = False  # a failed commit's reset began while the read waited
            return self.at

    engine.consumer = _Resetting(100)  # type: ignore[assignment]
    assert _settled(engine)[0] is False
