"""The partition database: committed writes, derived indexes, checkpoints (real rocksdict on disk)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.engine.step import Step
from app.engine.store import IndexReader, PartitionDB, StoreError, out_of_resources
from tests.support import ROOT


def enc(records: dict[str, Any]) -> dict[str, tuple[Any, bytes | None]]:
    """Records as a commit carries them: each value with its bytes."""
    return {k: (v, None if v is None else orjson.dumps(v)) for k, v in records.items()}


def _count_index(store: str, key: str, value: Any, reader: IndexReader) -> list[tuple[str, Any]]:
    if value is None:
        return []
    return [(f"by_color/{value['color']}/{key}", 1), ("count", (reader.index_get("count") or 0) + 1)]


def test_a_commit_is_written_whole_with_its_checkpoint(tmp_path: Path) -> None:
    db = PartitionDB(tmp_path / "p0", 0)
    checkpoint = {"offset": 7, "cluster": "c", "topic": "t"}
    db.apply({"s": enc({"a/1": {"x": 1}, "a/2": {"x": 2}, "b/1": {"x": 3}})}, {"s": checkpoint})
    assert db.get("s", "a/1") == {"x": 1}
    assert [k for k, _ in db.scan("s", "a/")] == ["a/1", "a/2"]
    assert db.last("s", "a/") == ("a/2", {"x": 2})
    assert db.checkpoint("s") == {"offset": 7, "cluster": "c", "topic": "t"}
    db.apply({"s": enc({"a/1": None})}, {})
    assert db.get("s", "a/1") is None
    assert db.has_records("s") and not db.has_records("other")
    db.close()


def test_scan_starts_after_a_cursor_and_reads_only_its_prefix(tmp_path: Path) -> None:
    db = PartitionDB(tmp_path / "p0", 0)
    db.apply({"s": enc({f"k/{i:03d}": i for i in range(50)} | {"l/000": -1})}, {})
    page = [item[0] for item, _ in zip(db.scan("s", "k/", "010\x00"), range(5), strict=False)]
    assert page == ["k/011", "k/012", "k/013", "k/014", "k/015"]
    assert db.last("s", "k/") == ("k/049", 49)
    assert db.last("s", "m/") is None
    db.close()


def test_derived_indexes_follow_the_records_and_are_wiped_with_their_store(tmp_path: Path) -> None:
    db = PartitionDB(tmp_path / "p0", 0, _count_index)
    db.apply({"s": enc({"1": {"color": "red"}, "2": {"color": "blue"}})}, {})
    db.apply({"s": enc({"3": {"color": "red"}})}, {})
    assert [k for k, _ in db.index_scan("s", "by_color/red/")] == ["by_color/red/1", "by_color/red/3"]
    assert db.index_get("s", "count") == 3
    db.wipe_store("s")
    assert db.get("s", "1") is None and db.index_get("s", "count") is None and db.checkpoint("s") is None
    db.close()


def test_a_step_reads_its_own_writes_then_the_commit_in_flight_then_rocksdb(tmp_path: Path) -> None:
    db = PartitionDB(tmp_path / "p0", 0)
    db.apply({"s": enc({"a": 1, "b": 1, "c": 1})}, {})
    step = Step(0, db)
    step.begin("stage", "topic", 0, {})
    step.put("s", "a", 2)
    step.put("s", "b", 2)
    writes, _ = step.freeze()  # a commit takes a and b
    assert {k: v for k, (v, _) in writes["s"].items()} == {"a": 2, "b": 2}
    step.begin("stage", "topic", 1, {})
    step.put("s", "a", 3)
    assert (step.get("s", "a"), step.get("s", "b"), step.get("s", "c")) == (3, 2, 1)
    db.apply(writes, {})
    step.landed()
    assert (step.get("s", "a"), step.get("s", "b")) == (3, 2)


def test_a_step_scans_its_own_writes_merged_into_rocksdb_in_key_order(tmp_path: Path) -> None:
    db = PartitionDB(tmp_path / "p0", 0)
    db.apply({"s": enc({"w/1": 1, "w/3": 1, "w/5": 1, "w/7": 1, "x/0": 1})}, {})
    step = Step(0, db)
    step.begin("stage", "topic", 0, {})
    step.put("s", "w/3", 2)  # the commit in flight changes one and deletes one
    step.put("s", "w/5", None)
    step.freeze()
    step.begin("stage", "topic", 1, {})
    step.put("s", "w/0", 3)  # the overlay adds before, between and after, and wins over the commit
    step.put("s", "w/4", 3)
    step.put("s", "w/3", 3)
    step.put("s", "w/9", 3)
    step.put("s", "w/7", None)
    assert list(step.scan("s", "w/")) == [("w/0", 3), ("w/1", 1), ("w/3", 3), ("w/4", 3), ("w/9", 3)]
    assert list(step.scan("s", "w/", "3")) == [("w/3", 3), ("w/4", 3), ("w/9", 3)]
    seen = []
    for key, _ in step.scan("s", "w/"):  # writing while iterating is allowed
        seen.append(key)
        step.put("s", key, None)
    assert seen == ["w/0", "w/1", "w/3", "w/4", "w/9"]
    assert list(step.scan("s", "w/")) == []


def test_rollback_undoes_exactly_the_failed_event(tmp_path: Path) -> None:
    db = PartitionDB(tmp_path / "p0", 0)
    step = Step(0, db)
    step.begin("stage", "t", 0, {})
    step.put("s", "a", 1)
    step.send("out", b"k", b"v1", [])
    step.begin("stage", "t", 1, {})
    step.put("s", "a", 2)
    step.put("s", "b", 2)
    step.cache_put("view", "a", 2)
    step.send("out", b"k", b"v2", [])
    step.rollback()
    assert step.get("s", "a") == 1 and step.get("s", "b") is None and step.cached("view", "a") is None
    assert [o.value for o in step.outputs] == [b"v1"]


def test_a_value_that_cannot_be_encoded_fails_its_handler_not_the_commit(tmp_path: Path) -> None:
    import pytest

    db = PartitionDB(tmp_path / "p0", 0)
    step = Step(0, db)
    step.begin("stage", "t", 0, {})
    with pytest.raises(TypeError):
        step.put("s", "revenue", {"cents": 2**64 + 1})  # past orjson's 64-bit integers
    step.rollback()
    writes, _ = step.freeze()
    assert writes == {"s": {}} or writes == {}


def test_a_scan_that_meets_a_damaged_file_raises_instead_of_ending_early(tmp_path: Path) -> None:
    import os

    import pytest

    from app.engine.store import StoreError

    db = PartitionDB(tmp_path / "p0", 0)
    db.apply({"s": enc({f"k/{i:06d}": {"v": i, "pad": os.urandom(50).hex()} for i in range(10_000)})}, {})
    db.db.flush()
    db.close()
    (sst,) = (tmp_path / "p0").glob("*.sst")
    data = bytearray(sst.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = os.urandom(4096)  # a damaged block mid-file
    sst.write_bytes(bytes(data))
    db = PartitionDB(tmp_path / "p0", 0)
    seen = 0
    with pytest.raises(StoreError, match="Corruption") as caught:
        for _ in db.scan("s", "k/"):
            seen += 1
    assert 0 < seen < 10_000
    assert caught.value.partition == 0
    failed = 0
    for i in range(10_000):  # point reads of the damaged block fail the same way, never a short answer
        try:
            assert db.get("s", f"k/{i:06d}")["v"] == i
        except StoreError:
            failed += 1
    assert 0 < failed < 10_000
    db.close()


def test_a_record_too_large_for_kafka_fails_its_handler_not_the_commit(tmp_path: Path) -> None:
    import os

    import pytest

    from app.engine.step import MAX_RECORD_BYTES, RecordTooLarge

    step = Step(0, PartitionDB(tmp_path / "p0", 0))
    step.begin("stage", "t", 0, {})
    step.put("s", "fits", os.urandom(MAX_RECORD_BYTES // 3).hex()[: MAX_RECORD_BYTES // 2])
    with pytest.raises(RecordTooLarge):
        step.put("s", "huge", os.urandom(MAX_RECORD_BYTES).hex())  # incompressible: twice the limit
    with pytest.raises(RecordTooLarge):
        step.send("t.orders", b"k", os.urandom(MAX_RECORD_BYTES), [])
    step.send("t.orders", b"k", b"{}", [])
    step.rollback()
    assert step.outputs == [] and step.freeze()[0] in ({}, {"s": {}})


def test_records_are_json_and_large_ones_compressed() -> None:
    import zlib

    from app.engine.store import COMPRESS_AT, decode_record, encode_record

    small = {"on_hand": 5, "reserved": 0}
    assert encode_record(small) == orjson.dumps(small)  # small records stay readable JSON
    entry = {"events": [{"id": f"{i:036d}", "type": "inventory.reserved", "payload": {"n": i}} for i in range(20)]}
    data = encode_record(entry)
    assert len(orjson.dumps(entry)) >= COMPRESS_AT and len(data) < len(orjson.dumps(entry)) / 4
    assert data[:1] == b"\x02"  # names the dictionary it was written with
    assert decode_record(data) == entry
    assert decode_record(orjson.dumps(entry)) == entry  # records written before compressing still read
    deflate = zlib.compressobj(1, zlib.DEFLATED, -11, 5)  # and those older versions deflated
    assert decode_record(b"\x01" + deflate.compress(orjson.dumps(entry)) + deflate.flush()) == entry


def test_compressing_is_safe_from_several_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from app.engine.store import decode_record, encode_record

    values = [{"events": [{"id": f"{i:036d}", "type": "order.paid", "n": n} for i in range(30)]} for n in range(400)]
    with ThreadPoolExecutor(4) as pool:
        encoded = list(pool.map(encode_record, values))
        assert list(pool.map(decode_record, encoded)) == values


_WRITER = """
import sys
import time
from pathlib import Path
from app.engine.store import PartitionDB
db = PartitionDB(Path(sys.argv[1]), 0)
value = b'"' + b"x" * 4094 + b'"'  # a 4 KB JSON string: memtables fill and flush
for i in range(100_000):
    records = {f"c{i:06d}/{j}": (None, value) for j in range(8)}
    db.apply({"s": records}, {"s": {"offset": i + 1, "cluster": "c", "topic": "t"}})
    if i == int(sys.argv[2]):
        print("ready", flush=True)
        time.sleep(60)  # killed here
    if i == int(sys.argv[3]):
        db.close()
        print("closed", flush=True)
        break
"""


def _spawn(script: str, *args: object) -> subprocess.Popen[str]:
    """Run ``script`` in a fresh interpreter at the project's root, its stdout readable."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def _run_writer(path: Path, ready_at: int, close_at: int) -> subprocess.Popen[str]:
    return _spawn(_WRITER, path, ready_at, close_at)


def test_a_killed_writer_leaves_a_whole_earlier_commit(tmp_path: Path) -> None:
    """No write-ahead log: a SIGKILL loses the memtable, never part of a commit or its checkpoint."""
    writer = _run_writer(tmp_path / "p0", ready_at=1_500, close_at=10**9)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    db = PartitionDB(tmp_path / "p0", 0)
    checkpoint = db.checkpoint("s")
    # 1,501 commits of 32 KB filled several 8 MB memtables: those were flushed, and the commits
    # still in the last one are lost (with a write-ahead log they would be back).
    assert checkpoint is not None and 0 < checkpoint["offset"] < 1_501
    commits = {key.split("/")[0] for key, _ in db.scan("s", "")}
    assert commits == {f"c{i:06d}" for i in range(checkpoint["offset"])}
    assert all(len([k for k, _ in db.scan("s", f"{c}/")]) == 8 for c in sorted(commits)[-3:])
    db.close()


def test_a_closed_writer_keeps_every_commit(tmp_path: Path) -> None:
    """A clean close flushes what the missing write-ahead log would have held."""
    writer = _run_writer(tmp_path / "p0", ready_at=10**9, close_at=20)
    assert writer.stdout is not None and writer.stdout.read().split() == ["closed"]
    assert writer.wait(timeout=30) == 0
    db = PartitionDB(tmp_path / "p0", 0)
    assert db.checkpoint("s") == {"offset": 21, "cluster": "c", "topic": "t"}
    assert len(list(db.scan("s", ""))) == 21 * 8
    db.close()


_FLUSHER = """
import sys
import time
from pathlib import Path
from app.engine.store import FLUSH_AFTER, PartitionDB
from tests.support import eventually
db = PartitionDB(Path(sys.argv[1]), 0)
for i in range(10):
    db.apply({"s": {f"c{i:06d}/0": (None, b'"x"')}}, {"s": {"offset": i + 1, "cluster": "c", "topic": "t"}})
if sys.argv[2] == "wipe":
    db.db.flush()
    db.wipe_store("s")
else:
    assert not db.flush_if_due(time.monotonic())  # too soon
    assert not db.flush_if_due(time.monotonic() + 5, after=10)  # too soon for a store_flush_after of 10 s
    assert db.flush_if_due(time.monotonic() + FLUSH_AFTER)
    busy = ("rocksdb.num-immutable-mem-table", "rocksdb.num-running-flushes")
    eventually(  # the background flush is done (its file is in the manifest)
        lambda: not any(db.db.property_int_value(p) for p in busy), timeout=30, interval=0.01, what="the flush"
    )
    assert db.db.property_int_value("rocksdb.num-entries-active-mem-table") == 0
print("ready", flush=True)
time.sleep(60)  # killed here
"""


def _kill_after_ready(path: Path, mode: str) -> None:
    proc = _spawn(_FLUSHER, path, mode)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_commits_older_than_flush_after_survive_a_kill(tmp_path: Path) -> None:
    """Without a write-ahead log a quiet partition's commits would stay in memory: the engine flushes them."""
    _kill_after_ready(tmp_path / "p0", "flush")
    db = PartitionDB(tmp_path / "p0", 0)
    assert db.checkpoint("s") == {"offset": 10, "cluster": "c", "topic": "t"}
    assert len(list(db.scan("s", ""))) == 10
    db.close()


def test_a_wipe_survives_a_kill(tmp_path: Path) -> None:
    """A store condemned by recovery stays wiped: its old checkpoint never comes back."""
    _kill_after_ready(tmp_path / "p0", "wipe")
    db = PartitionDB(tmp_path / "p0", 0)
    assert db.checkpoint("s") is None and not db.has_records("s")
    db.close()


_HOLDER = """
import sys
import time
from pathlib import Path
from app.engine.store import PartitionDB
db = PartitionDB(Path(sys.argv[1]), 0)
print("open", flush=True)
time.sleep(60)
"""


def test_a_database_another_process_holds_is_in_use_not_damaged(tmp_path: Path) -> None:
    # Two workers on one data directory (the first's lock file removed with its directory): the
    # second set the first's live database aside as damaged (probe 15). It refuses instead.
    from app.engine.store import open_or_discard

    path = tmp_path / "p0.rocksdb"
    holder = _spawn(_HOLDER, path)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(RuntimeError, match="in use by another process"):  # InUseError
            open_or_discard(path, 0)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.rocksdb"]  # nothing set aside
    finally:
        holder.kill()
        holder.wait()
    open_or_discard(path, 0).close()  # free again: opens as it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.rocksdb"]


def test_a_database_the_machine_keeps_from_opening_is_kept_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory made unreadable by hand, or a full disk, at start-up: the files are sound. They
    # were moved aside as damaged and the partition restored from its changelogs (probe 27).
    from app.engine import store

    path = tmp_path / "p0.rocksdb"
    store.PartitionDB(path, 0).close()

    def refused(*_: object, **__: object) -> None:
        raise Exception(f"IO error: While opening a file for sequentially reading: {path}/CURRENT: Permission denied")

    monkeypatch.setattr(store, "PartitionDB", refused)
    with pytest.raises(store.StoreError, match="Permission denied"):
        store.open_or_discard(path, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.rocksdb"]  # nothing set aside


class _HeldError:
    """A RocksDB stand-in that counts ``errors`` background errors and answers writes as told."""

    def __init__(self, real: Any, errors: int, refuse: str | None) -> None:
        self.real, self.errors, self.refuse, self.writes = real, errors, refuse, 0

    def property_int_value(self, name: str) -> int:
        assert name == "rocksdb.background-errors"
        return self.errors

    def write(self, batch: Any) -> None:
        self.writes += 1
        if self.refuse:
            raise Exception(self.refuse)  # as rocksdict raises RocksDB's status
        self.real.write(batch)


def test_a_background_error_rocksdb_holds_is_raised_with_its_reason(tmp_path: Path) -> None:
    # A flush that failed on a full disk is only in RocksDB's LOG; a quiet partition would not
    # write again to hear of it (probe 27). The count rose: an empty write brings the reason back.
    db = PartitionDB(tmp_path / "p0", 0)
    real = db.db
    db.db = _HeldError(real, 0, "IO error: No space left on device: While appending to file: 000008.sst")  # type: ignore[assignment]
    db.check_background()  # no error counted: nothing written
    assert db.db.writes == 0  # type: ignore[attr-defined]
    db.db.errors = 1  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="No space left on device") as raised:
        db.check_background()
    assert out_of_resources(raised.value)  # handled as a full disk: reopened in place, not set aside
    real.close()


def test_a_background_error_rocksdb_no_longer_holds_is_only_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = PartitionDB(tmp_path / "p0", 0)
    real = db.db
    db.db = _HeldError(real, 1, None)  # type: ignore[assignment]
    db.check_background()
    db.check_background()  # the same count: not asked again
    assert db.db.writes == 1  # type: ignore[attr-defined]
    assert [r.levelname for r in caplog.records if "background job failed" in r.getMessage()] == ["WARNING"]
    real.close()


def test_a_copy_that_cannot_be_made_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from app.engine import store

    def full(_: Any) -> Any:
        raise Exception("IO error: No space left on device")

    db = PartitionDB(tmp_path / "p0", 0)
    monkeypatch.setattr(store, "Checkpoint", full)
    assert db.keep_copy() is None
    assert any("could not keep a copy" in r.getMessage() for r in caplog.records)
    db.close()


def test_a_kept_copy_opens_with_the_records_as_they_were(tmp_path: Path) -> None:
    db = PartitionDB(tmp_path / "p0", 0)
    db.apply({"order_records": {"log/o1/000000": ({"events": []}, b'{"events":[]}')}}, {})
    copy = db.keep_copy()
    db.wipe_store("order_records")
    db.close()
    assert copy is not None and copy.name.startswith("p0.discarded-")
    kept = PartitionDB(copy, 0)
    assert [k for k, _ in kept.scan("order_records", "log/")] == ["log/o1/000000"]
    kept.close()
