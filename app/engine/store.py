"""One RocksDB database (rocksdict) per partition number: every store's records of that partition.

A task (partition ``p`` of every input topic) owns partition ``p`` of every store. The
task's database holds them all, each store's keys under its own prefix
(``<store>/<key>``), plus local bookkeeping that never goes to a changelog:

* ``~cp/<store>``: the checkpoint — the changelog partition's next offset the database
  has applied, the cluster and changelog topic it was written against, and the layout
  of the records and indexes it holds (:data:`LAYOUT`; another layout is rebuilt);
* ``~ix/...``: derived indexes (by status, by user, deadlines, counters) computed from
  the records as they are applied, live or during recovery, so they never disagree.

Writes reach RocksDB only as whole commits: one ``WriteBatch`` with the records, their
derived index entries and the new checkpoints, written after the commit's Kafka
transaction succeeded. So the database is always exactly at a committed point.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson
import zstandard
from rocksdict import BlockBasedOptions, Checkpoint, Options, Rdict, WriteBatch, WriteOptions

log = logging.getLogger("orderstream.store")

SEP = "/"
CHECKPOINT = "~cp/"
INDEX = "~ix/"

#: Seconds a commit may stay only in a memtable (there is no write-ahead log) before the
#: memtable is flushed to disk: the default of the ``store_flush_after`` setting. Bounds what a
#: SIGKILL makes recovery replay, and keeps the checkpoint on disk far younger than the
#: changelog's tombstone retention (``delete.retention.ms``, 24 h by default): replaying from
#: an older checkpoint than that could miss a delete the log cleaner has since dropped, and
#: bring the key back.
FLUSH_AFTER = 60.0

#: Records whose JSON reaches this many bytes are stored and sent compressed (smaller ones, e.g.
#: a stock count, stay plain JSON).
COMPRESS_AT = 128
#: zstd at level 1 with a dictionary trained on the stages' own records (``scripts/record_dictionary.py``):
#: the field names, event types and statuses every record repeats are in the dictionary, so a
#: 750-byte history entry keeps about 22 % of its size (deflate: 53 %) at a fifth of deflate's
#: cost (1.8 µs against 9.5). Written records name their dictionary with their first byte, so
#: this file never changes; a new dictionary is a new file and a new marker.
_DICTIONARY = Path(__file__).with_name("records-1.zdict")
_ZSTD_1 = b"\x02"  # zstd with dictionary 1; JSON never starts with it
_DEFLATED = b"\x01"  # raw deflate, written by versions before the dictionary (still read)
_WBITS = -11  # their deflate window (2 KB)


class _Codec(threading.local):
    """A compressor and a decompressor per thread (zstd contexts must not be shared between threads)."""

    dictionary: zstandard.ZstdCompressionDict | None = None

    def __init__(self) -> None:
        if _Codec.dictionary is None:
            _Codec.dictionary = zstandard.ZstdCompressionDict(_DICTIONARY.read_bytes())
        self.compress = zstandard.ZstdCompressor(
            level=1, dict_data=_Codec.dictionary, write_checksum=False, write_dict_id=False
        ).compress
        self.decompress = zstandard.ZstdDecompressor(dict_data=_Codec.dictionary).decompress


_codec = _Codec()


def encode_record(value: Any) -> bytes:
    """A record's bytes, in RocksDB and in its changelog: JSON, compressed from :data:`COMPRESS_AT` bytes on."""
    data = orjson.dumps(value)
    if len(data) < COMPRESS_AT:
        return data
    return _ZSTD_1 + _codec.compress(data)


def decode_record(raw: bytes) -> Any:
    """The value :func:`encode_record` encoded (plain JSON and deflated records from older writers too)."""
    marker = raw[:1]
    if marker == _ZSTD_1:
        raw = _codec.decompress(raw[1:])
    elif marker == _DEFLATED:
        raw = zlib.decompress(raw[1:], _WBITS)
    return orjson.loads(raw)


#: The layout of the local records and derived indexes; a database checkpointed with another
#: one is rebuilt from the changelogs (2: order state kept in the index, history entries hold changes).
LAYOUT = 2


def checkpoint(
    offset: int, cluster: str, topic: str, topic_id: str | None = None, partition: int | None = None
) -> dict[str, Any]:
    """What a store partition records with each commit it applies (see :func:`app.engine.recovery.verdict`).

    ``topic_id``: the changelog's Kafka topic id, when the broker has them (which copy of a
    topic deleted and created again under its name the state came from).
    """
    cp = {"offset": offset, "cluster": cluster, "topic": topic, "layout": LAYOUT}
    if topic_id:
        cp["topic_id"] = topic_id
    if partition is not None:
        cp["partition"] = partition
    return cp


class IndexReader(Protocol):
    """What an indexer may read: the store's derived entries as this commit left them so far."""

    partition: int

    def index_get(self, key: str) -> Any: ...


#: ``index(store, key, value, reader) -> [(index key, value or None)]``: the derived entries one write
#: changes, in the store's own index namespace (rebuilt with the store).
Indexer = Callable[[str, str, Any, IndexReader], list[tuple[str, Any]]]


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_max_background_jobs(1)
    options.set_write_buffer_size(8 * 1024 * 1024)
    # Most point reads miss (a new order's state, payment and confirmation records): without
    # a Bloom filter a miss reads a block of every file it might be in, 8.5 µs against 1.1 µs
    # with one (300,000 keys; the filter costs ~10 bits a key). Files written without one
    # still read; only new files get it.
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    return options


class PartitionDB:
    """The records of every store for one partition number, in one rocksdict database."""

    def __init__(self, path: Path, partition: int, indexer: Indexer | None = None) -> None:
        self.path = path
        self.partition = partition
        self.indexer = indexer
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path), _options())
        # No write-ahead log (as Kafka Streams' RocksDB stores): the changelogs are the log. A
        # killed process loses what was still in the memtable, and the database reopens at an
        # older commit, whole (each commit is one batch with its checkpoints); recovery then
        # reads the changelogs from that checkpoint on. A clean close flushes the memtable.
        # Saves a third of the CPU a commit's write batch costs.
        unlogged = WriteOptions()
        unlogged.disable_wal = True  # type: ignore[method-assign,assignment]  # a property (the stub says a method)
        self.db.set_write_options(unlogged)
        #: ``time.monotonic()`` of the oldest write not yet flushed (None: all on disk).
        self.unflushed_since: float | None = None
        #: Background errors RocksDB has counted since it opened that :meth:`check_background` has seen.
        self._background_errors = 0

    # --- reads (committed state) ----------------------------------------------------

    def get(self, store: str, key: str) -> Any:
        """The committed value of ``key`` in ``store``, or ``None``."""
        raw = self._read(f"{store}{SEP}{key}".encode())
        return None if raw is None else decode_record(raw)

    def _read(self, key: bytes) -> bytes | None:
        try:
            return self.db.get(key)  # type: ignore[no-any-return]
        except Exception as exc:  # rocksdict raises a bare Exception with RocksDB's status (Corruption, IO error)
            raise StoreError(self.partition, f"RocksDB could not read {key[:80]!r}: {exc}") from exc

    def scan(self, store: str, prefix: str, start: str = "", *, reverse: bool = False) -> Iterator[tuple[str, Any]]:
        """``(key, value)`` of ``store`` whose key starts with ``prefix``, from ``prefix + start`` on, in key order.

        Cost is proportional to what the caller reads: one seek, then one step per item.
        """
        base = f"{store}{SEP}{prefix}".encode()
        cut = len(store) + len(SEP)
        it = self.db.iter()
        if reverse:
            it.seek_for_prev(base + (start.encode() if start else b"\xff"))
        else:
            it.seek(base + start.encode())
        while it.valid():
            k = it.key()
            if not k.startswith(base):
                return
            yield k[cut:].decode(), decode_record(it.value())
            if reverse:
                it.prev()
            else:
                it.next()
        if (error := _stopped_on(it)) is not None:
            del it  # a live iterator keeps RocksDB open (and locked) after close: none in the traceback
            raise StoreError(self.partition, error)

    def last(self, store: str, prefix: str) -> tuple[str, Any] | None:
        """The last ``(key, value)`` of ``store`` under ``prefix``, or ``None``."""
        for item in self.scan(store, prefix, reverse=True):
            return item
        return None

    def index_get(self, store: str, key: str) -> Any:
        """A derived index entry of ``store`` (committed)."""
        raw = self._read(f"{INDEX}{store}{SEP}{key}".encode())
        return None if raw is None else orjson.loads(raw)

    def index_scan(
        self, store: str, prefix: str, start: str = "", stop: str | None = None
    ) -> Iterator[tuple[str, Any]]:
        """Derived entries of ``store`` under ``prefix``, from ``prefix + start`` up to ``prefix + stop`` (excluded)."""
        base = f"{INDEX}{store}{SEP}{prefix}".encode()
        end = None if stop is None else base + stop.encode()
        cut = len(INDEX) + len(store) + len(SEP)
        it = self.db.iter()
        it.seek(base + start.encode())
        while it.valid():
            k = it.key()
            if not k.startswith(base) or (end is not None and k >= end):
                return
            yield k[cut:].decode(), orjson.loads(it.value())
            it.next()
        if (error := _stopped_on(it)) is not None:
            del it  # a live iterator keeps RocksDB open (and locked) after close: none in the traceback
            raise StoreError(self.partition, error)

    # --- checkpoints ----------------------------------------------------------------

    def checkpoint(self, store: str) -> dict[str, Any] | None:
        """What this database last applied of ``store``'s changelog partition."""
        raw = self._read(f"{CHECKPOINT}{store}".encode())
        return None if raw is None else orjson.loads(raw)

    def has_records(self, store: str) -> bool:
        """Whether ``store`` has any record here."""
        base = f"{store}{SEP}".encode()
        it = self.db.iter()
        it.seek(base)
        if it.valid():
            return bool(it.key().startswith(base))
        if (error := _stopped_on(it)) is not None:
            del it  # a live iterator keeps RocksDB open (and locked) after close: none in the traceback
            raise StoreError(self.partition, error)
        return False

    # --- writes ---------------------------------------------------------------------

    def apply(
        self,
        writes: dict[str, dict[str, tuple[Any, bytes | None]]],
        checkpoints: dict[str, dict[str, Any]],
    ) -> None:
        """Write one commit atomically: ``{store: {key: (value or None, its bytes)}}`` and each new checkpoint."""
        batch = WriteBatch(raw_mode=True)
        for store, records in writes.items():
            derived: dict[str, Any] = {}
            reader = _Pending(self, store, derived)
            for key, (value, data) in records.items():
                full = f"{store}{SEP}{key}".encode()
                if data is None:
                    batch.delete(full)
                else:
                    batch.put(full, data)
                if self.indexer is not None:
                    for ix_key, ix_value in self.indexer(store, key, value, reader):
                        derived[ix_key] = ix_value
            for ix_key, ix_value in derived.items():
                full = f"{INDEX}{store}{SEP}{ix_key}".encode()
                if ix_value is None:
                    batch.delete(full)
                else:
                    batch.put(full, orjson.dumps(ix_value))
        for store, cp in checkpoints.items():
            batch.put(f"{CHECKPOINT}{store}".encode(), orjson.dumps(cp))
        self._write(batch)
        if self.unflushed_since is None:
            self.unflushed_since = time.monotonic()

    def flush_if_due(self, now: float, after: float = FLUSH_AFTER) -> bool:
        """Flush the memtable in the background if a write has waited ``after`` seconds."""
        if self.unflushed_since is None or now - self.unflushed_since < after:
            return False
        self._flush(wait=False)  # RocksDB switches memtables between two batches: whole commits
        self.unflushed_since = None
        return True

    def check_background(self) -> None:
        """Raise :class:`StoreError` if a background flush or compaction has failed and RocksDB still holds it.

        Such a failure (a full disk) is written only to RocksDB's own LOG, and RocksDB then
        refuses every write with it; a quiet partition would not write again for a long time
        (probe 27: 76 s of a full disk, the worker ready meanwhile). An empty write brings the
        error back with its reason, so it is handled like a failed commit's. One that does not
        stop writes (a compaction's) is only logged.
        """
        try:
            errors = int(self.db.property_int_value("rocksdb.background-errors") or 0)
        except Exception:  # noqa: BLE001 - a statistic that cannot be read says nothing either way
            return
        if errors <= self._background_errors:
            return
        self._background_errors = errors
        self._write(WriteBatch(raw_mode=True))  # raises StoreError with RocksDB's reason while it holds the error
        log.warning(
            "partition %s: a RocksDB background job failed and writes are still taken (its LOG says why)",
            self.partition,
        )

    def keep_copy(self) -> Path | None:
        """Copy the database beside itself (``<name>.discarded-<unix time>``) before state is thrown away.

        A RocksDB checkpoint: hard links to its files, so cheap, and openable as it was. Kept for
        the operator (the worker never removes it); ``None``, with one log line, if it cannot be made.
        """
        aside = self.path.with_name(f"{self.path.name}.discarded-{time.time():.3f}")
        try:
            Checkpoint(self.db).create_checkpoint(str(aside))
        except Exception as exc:  # noqa: BLE001 - the copy is a courtesy: recovery goes on without it
            log.error(
                "partition %s: could not keep a copy of %s before discarding it: %s", self.partition, self.path, exc
            )
            return None
        return aside

    def wipe_store(self, store: str) -> None:
        """Delete every record, derived entry and the checkpoint of ``store``."""
        batch = WriteBatch(raw_mode=True)
        for base in (f"{store}{SEP}".encode(), f"{INDEX}{store}{SEP}".encode()):
            batch.delete_range(base, base[:-1] + bytes([base[-1] + 1]))
        batch.delete(f"{CHECKPOINT}{store}".encode())
        self._write(batch)
        # On disk at once: a wipe lost with the memtable would bring back the checkpoint that
        # condemned the store, which may pass the check later (a recreated changelog grows past it).
        self._flush(wait=True)

    def _flush(self, *, wait: bool) -> None:
        try:
            self.db.flush(wait=wait)
        except Exception as exc:
            raise StoreError(self.partition, f"RocksDB could not flush: {exc}") from exc

    def _write(self, batch: WriteBatch) -> None:
        try:
            self.db.write(batch)
        except Exception as exc:
            raise StoreError(self.partition, f"RocksDB could not write: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        self.db.close()


#: What RocksDB says when the machine, not the database, failed it: the files are sound, open them again.
RESOURCE_ERRORS = (
    "Too many open files",
    "No space left on device",
    "Cannot allocate memory",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",  # a directory made unreadable by hand: kept and opened again, not set aside (probe 27)
)


def out_of_resources(error: BaseException | str) -> bool:
    """Whether a RocksDB error is the process running out of descriptors, disk or memory, a disk
    remounted read-only or files it may not open (nothing wrong with the files: set aside, they
    would be lost)."""
    text = str(error)
    return any(reason in text for reason in RESOURCE_ERRORS)


class StoreError(RuntimeError):
    """RocksDB could not read or write a partition's database: no answer, rather than a short one.

    The engine sets such a database aside and restores the partition from its changelogs
    (:meth:`app.engine.runtime.Engine.report_damage`).
    """

    def __init__(self, partition: int, message: str) -> None:
        super().__init__(f"partition {partition}: {message}")
        self.partition = partition


def _stopped_on(it: Any) -> str | None:
    """Why an iterator stopped, if on an error (corruption) rather than at the end; else ``None``.

    RocksDB's iterator becomes invalid either way; only its status tells them apart, and a
    scan that stopped on a damaged block would otherwise look like the end of the data.
    Returns the text only, so the error holds no reference to the iterator.
    """
    try:
        it.status()
    except Exception as exc:  # noqa: BLE001 - rocksdict raises a bare Exception with RocksDB's status
        return f"RocksDB could not read on: {exc}"
    return None


def open_or_discard(path: Path, partition: int, indexer: Indexer | None = None) -> PartitionDB:
    """Open a partition's database; one RocksDB cannot open (corrupt, unreadable) is set aside and started anew.

    Everything in it is in the changelogs: recovery finds no checkpoint in the new one and
    restores the partition from them, as for a wiped data directory. The old directory is
    kept beside it (``<name>.corrupt-<unix time>``) for a post-mortem.

    A database another live process holds open (its RocksDB ``LOCK``) is not damaged: that
    is :class:`InUseError`, and nothing is moved. Nor is one the machine keeps from opening
    (:func:`out_of_resources`: a full disk, files it may not read): that is a
    :class:`StoreError`, and the files stay where they are.
    """
    try:
        return PartitionDB(path, partition, indexer)
    except Exception as exc:  # rocksdict raises a bare Exception for an IO or corruption error
        if held_elsewhere(exc):
            raise InUseError(
                partition, f"its database {path} is in use by another process: give each worker its own --datadir"
            ) from exc
        if out_of_resources(exc):
            raise StoreError(partition, f"RocksDB could not open {path}: {exc}") from exc
        set_aside(path, partition, f"cannot be opened ({exc})")
        return PartitionDB(path, partition, indexer)


class InUseError(RuntimeError):
    """A partition's database is open in another process (two workers on one data directory)."""

    def __init__(self, partition: int, message: str) -> None:
        super().__init__(f"partition {partition}: {message}")
        self.partition = partition


def held_elsewhere(error: BaseException | str) -> bool:
    """Whether RocksDB refused to open a database because another process holds its ``LOCK`` file."""
    return "While lock file" in str(error)


def set_aside(path: Path, partition: int, why: str) -> None:
    """Move a closed, damaged database out of the way (``<name>.corrupt-<time>``), with one log line."""
    aside = path.with_name(f"{path.name}.corrupt-{time.time():.3f}")
    log.error(
        "partition %s: its database %s; set aside as %s, restoring it from the changelogs", partition, why, aside.name
    )
    if path.exists():
        path.rename(aside)


class _Pending:
    """A store's committed derived entries, seen through the ones this commit already derived."""

    def __init__(self, db: PartitionDB, store: str, derived: dict[str, Any]) -> None:
        self._db = db
        self._store = store
        self._derived = derived
        self.partition = db.partition

    def index_get(self, key: str) -> Any:
        if key in self._derived:
            return self._derived[key]
        return self._db.index_get(self._store, key)
