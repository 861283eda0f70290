"""A partition database RocksDB failed: opened again when the process ran out of something, set aside if damaged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.engine.runtime import Engine, Task
from app.engine.step import Step
from app.engine.store import PartitionDB, StoreError, out_of_resources
from tests.support import offline_engine


@pytest.mark.parametrize(
    ("error", "resources"),
    [
        (
            "RocksDB could not write: IO error: While open a file for appending: 000012.log: Too many open files",
            True,
        ),
        ("RocksDB could not flush: IO error: No space left on device", True),
        ("IO error: While open a file for appending: /data/p0/000012.log: Read-only file system", True),
        ("IO error: While opening a file for sequentially reading: /data/p0.rocksdb/CURRENT: Permission denied", True),
        ("RocksDB could not read b'orders/x': Corruption: block checksum mismatch", False),
        ("IO error: No such file or directory: While open a file for random read: 000009.sst", False),
    ],
)
def test_which_rocksdb_errors_are_the_machine_s_not_the_file_s(error: str, resources: bool) -> None:
    assert out_of_resources(error) is resources


def _task(tmp_path: Path) -> tuple[Engine, Task]:
    engine: Engine = offline_engine(tmp_path, partitions=1)
    path = tmp_path / "p0.rocksdb"
    db = PartitionDB(path, 0)
    db.apply({"orders": {"o1": ({"a": 1}, b'{"a":1}')}}, {"orders": {"offset": 7}})
    task = Task(0, Step(0, db), None)  # type: ignore[arg-type]
    engine.tasks[0], engine.dbs[0] = task, db
    return engine, task


def test_a_database_failed_for_want_of_descriptors_is_opened_again_with_its_records(tmp_path: Path) -> None:
    engine, task = _task(tmp_path)
    engine._replace_db(task, "RocksDB could not write: IO error: Too many open files")
    assert task.step.db is engine.dbs[0] and task.step.db.get("orders", "o1") == {"a": 1}
    assert task.step.db.checkpoint("orders") == {"offset": 7}  # restored from here, not from the beginning
    assert not list(tmp_path.glob("p0.rocksdb.corrupt-*"))
    task.step.db.close()


def test_a_damaged_database_is_set_aside_and_started_empty(tmp_path: Path) -> None:
    engine, task = _task(tmp_path)
    engine._replace_db(task, "RocksDB could not read: Corruption: block checksum mismatch")
    assert task.step.db.get("orders", "o1") is None and task.step.db.checkpoint("orders") is None
    assert len(list(tmp_path.glob("p0.rocksdb.corrupt-*"))) == 1
    task.step.db.close()


def test_a_partition_that_cannot_open_its_database_for_long_stops_the_worker_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full or read-only disk: the worker gives its partitions up rather than holding them stalled."""
    engine, task = _task(tmp_path)
    reasons: list[str] = []
    engine._give_up = reasons.append
    engine.give_up_after = 30.0
    clock = [1000.0]
    monkeypatch.setattr("app.engine.runtime.time.monotonic", lambda: clock[0])

    def refuse(task: Task, why: str) -> None:
        raise StoreError(0, "cannot open: IO error: Read-only file system")

    monkeypatch.setattr(engine, "_replace_db", refuse)
    for _ in range(30):  # one try a second for 29 s: still trying
        asyncio.run(engine._rebuild(task, "RocksDB could not write: Read-only file system"))
        clock[0] += 1
    assert reasons == []
    for _ in range(5):
        asyncio.run(engine._rebuild(task, "RocksDB could not write: Read-only file system"))
        clock[0] += 1
    assert len(reasons) == 1 and "partition 0" in reasons[0] and "Read-only file system" in reasons[0]
    task.step.db.close()


def test_a_failure_that_clears_starts_the_count_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, task = _task(tmp_path)
    engine._give_up = lambda reason: pytest.fail(reason)
    clock = [0.0]
    monkeypatch.setattr("app.engine.runtime.time.monotonic", lambda: clock[0])
    engine._still_failing(0, OSError("No space left on device"))
    clock[0] += 29
    engine._failing.pop(0)  # as a restore that succeeds does
    clock[0] += 29
    engine._still_failing(0, OSError("No space left on device"))
    task.step.db.close()


def test_a_partition_whose_database_cannot_be_opened_at_all_stops_the_worker(tmp_path: Path) -> None:
    """Not even a fresh database opens (a file where the directory goes): holding the partition
    would stall it, so the worker gives its partitions up at once."""
    datadir = tmp_path / "engine"
    datadir.write_text("x")
    engine: Engine = offline_engine(datadir, partitions=1)
    reasons: list[str] = []
    engine._give_up = reasons.append
    with pytest.raises(OSError):
        asyncio.run(engine._open_task(0))
    assert len(reasons) == 1 and "partition 0: cannot open a database in" in reasons[0]
