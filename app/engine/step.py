"""What a handler sees while its partition's step runs: its stores, the event, what to send.

A step handles, in offset order, what is buffered for one partition number. Each
handler stays a pure per-event decision wrapped by a thin adapter; the step collects
its writes in an overlay over the partition's committed database (reads see them at
once) and its outputs in a list. Nothing reaches RocksDB or a changelog until the
commit; a failed handler's writes and outputs are rolled back before its input is
dead-lettered.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from app.engine.store import PartitionDB, encode_record

_MISSING: Any = object()

#: How many committed cache entries a step keeps per view before it starts over. An order's
#: state is about 2.7 KB of Python objects (measured: 30,000 fewer entries, 80 MB less RSS),
#: so this bounds the cache near 27 MB per task; it holds every order in flight at a steady
#: 2,000 orders/s many times over (50,000 would let a worker of 8 tasks grow past 1 GB).
HOT_ENTRIES = 10_000

#: The largest record (key, value and headers) a step may write or send. The broker refuses
#: a batch over its ``message.max.bytes`` (1,048,588 by default) and the producer a request
#: over 1 MiB: a larger record would fail every commit of its partition, and its input would
#: be read again for ever. Refused when it is written instead, it fails its event, which is
#: dead-lettered.
MAX_RECORD_BYTES = 960_000


class RecordTooLarge(ValueError):
    """A record a handler wrote or sent is larger than Kafka takes."""


#: A background job started by a handler; its result comes back to the partition as a local input.
Effect = Callable[[], Awaitable[Any]]


@dataclass
class Output:
    """One record to produce: Kafka topic, key, value bytes (already encoded)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Step:
    """The state and outputs of one partition between two commits."""

    def __init__(self, partition: int, db: PartitionDB) -> None:
        self.partition = partition
        self.db = db
        #: ``{store: {key: (value or None, its bytes)}}``: written since the last commit began, not yet
        #: in RocksDB. A value is encoded when it is written, so one that cannot be (an integer
        #: past 64 bits) fails its handler, and its input is dead-lettered, not the commit.
        self.overlay: dict[str, dict[str, tuple[Any, bytes | None]]] = {}
        #: The writes of the commit in flight: read through until RocksDB has them.
        self.frozen: dict[str, dict[str, tuple[Any, bytes | None]]] = {}
        #: Per-store caches that views keep in step with the overlay (e.g. an order's latest entry).
        self.caches: dict[str, dict[str, Any]] = {}
        self.frozen_caches: dict[str, dict[str, Any]] = {}
        #: Committed cache entries kept after their commit landed (recently touched keys are
        #: usually touched again soon: an order's next input follows within milliseconds).
        self.hot: dict[str, dict[str, Any]] = {}
        self.outputs: list[Output] = []
        self.effects: list[tuple[str, Effect]] = []
        #: Ids of the events handled since the last commit (only while someone waits for one).
        self.handled: list[str] = []
        #: What this partition's effects are doing now (a stage's own keys, e.g. ``notify/<order>``),
        #: so a repeated input starts no second one. Forgotten with the step's work on a reset: an
        #: effect cancelled before it ran cannot say it ended (review: a notification then never sent).
        self.inflight: set[str] = set()
        # The event being handled.
        self.topic = ""
        self.offset = -1
        self.stage = ""
        self.env: dict[str, Any] = {}
        self._undo: list[tuple[dict[str, Any], str, Any]] = []
        self._outputs_mark = 0
        self._effects_mark = 0

    # --- the event scope --------------------------------------------------------

    def begin(self, stage: str, topic: str, offset: int, env: dict[str, Any]) -> None:
        """Start handling one event: later :meth:`rollback` undoes exactly what it did."""
        self.stage, self.topic, self.offset, self.env = stage, topic, offset, env
        self._undo.clear()
        self._outputs_mark = len(self.outputs)
        self._effects_mark = len(self.effects)

    def rollback(self) -> None:
        """Undo the writes, outputs and effects of the event being handled."""
        for mapping, key, previous in reversed(self._undo):
            if previous is _MISSING:
                mapping.pop(key, None)
            else:
                mapping[key] = previous
        self._undo.clear()
        del self.outputs[self._outputs_mark :]
        del self.effects[self._effects_mark :]

    # --- state ----------------------------------------------------------------------

    def get(self, store: str, key: str) -> Any:
        """The value of ``key`` as this step sees it (its own writes first), or ``None``."""
        pending = self.overlay.get(store)
        if pending is not None and key in pending:
            return pending[key][0]
        pending = self.frozen.get(store)
        if pending is not None and key in pending:
            return pending[key][0]
        return self.db.get(store, key)

    def put(self, store: str, key: str, value: Any) -> None:
        """Write ``key`` (``None`` deletes it); a record too large for its changelog fails the event."""
        data = None if value is None else encode_record(value)
        if data is not None and len(data) + len(key) > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"the {store} record {key[:80]!r} would take {len(data) + len(key)} bytes")
        pending = self.overlay.setdefault(store, {})
        self._undo.append((pending, key, pending.get(key, _MISSING)))
        pending[key] = (value, data)

    def cached(self, name: str, key: str) -> Any:
        """A view's cached value for ``key`` (set with :meth:`cache_put` since the last commit landed), or ``None``."""
        for layer in (self.caches, self.frozen_caches, self.hot):
            cache = layer.get(name)
            if cache is not None and key in cache:
                return cache[key]
        return None

    def cache_put(self, name: str, key: str, value: Any) -> None:
        """Set a view's cache entry, undone on rollback."""
        cache = self.caches.setdefault(name, {})
        self._undo.append((cache, key, cache.get(key, _MISSING)))
        cache[key] = value

    def scan(self, store: str, prefix: str, start: str = "") -> Iterator[tuple[str, Any]]:
        """``(key, value)`` under ``prefix`` from ``prefix + start`` on, in key order, as this step sees it.

        The committed records with this step's own writes merged in (theirs win; deleted keys
        are left out). The writes are taken when the scan begins: a caller may write while
        it iterates.
        """
        low = prefix + start
        pending: dict[str, Any] = {}
        for layer in (self.frozen, self.overlay):  # the overlay is newer
            for key, (value, _) in layer.get(store, {}).items():
                if key.startswith(prefix) and key >= low:
                    pending[key] = value
        if not pending:
            yield from self.db.scan(store, prefix, start)
            return
        committed = ((k, v) for k, v in self.db.scan(store, prefix, start) if k not in pending)
        for key, value in heapq.merge(committed, sorted(pending.items()), key=itemgetter(0)):
            if value is not None:  # deleted by this step
                yield key, value

    # --- outputs --------------------------------------------------------------------

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Queue one record (rolled back with the event); one too large for Kafka fails the event."""
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"a record to {topic} would take {size} bytes")
        self.outputs.append(Output(topic, key, value, headers))

    def start(self, name: str, effect: Effect, *, key: str | None = None) -> None:
        """Run ``effect`` once this event is handled; it comes back here as a local input.

        The input's offset is held (not committed past) until then, so a crash makes the
        partition's next owner read it again and start the effect again. With ``key``, the
        effect is in :attr:`inflight` until it ends (or the step's work is reset): a stage
        checks it so that a repeated input starts no second one.
        """
        if key is not None:
            inflight = self.inflight
            inflight.add(key)
            run = effect

            async def effect() -> Any:
                try:
                    return await run()
                finally:
                    inflight.discard(key)

        self.effects.append((name, effect))

    def freeze(self) -> tuple[dict[str, dict[str, tuple[Any, bytes | None]]], list[str]]:
        """Hand the writes so far to a commit (still read through) and start a new overlay."""
        self.frozen, self.overlay = self.overlay, {}
        self.frozen_caches, self.caches = self.caches, {}
        handled, self.handled = self.handled, []
        return self.frozen, handled

    def landed(self) -> None:
        """The commit in flight reached RocksDB: stop reading through it (its cache entries stay hot)."""
        self.frozen = {}
        for name, cache in self.frozen_caches.items():
            hot = self.hot.setdefault(name, {})
            if len(hot) + len(cache) > HOT_ENTRIES:
                hot.clear()
            hot.update(cache)
        self.frozen_caches = {}

    def reset(self) -> None:
        """Forget every write not in RocksDB."""
        self.overlay, self.frozen = {}, {}
        self.caches, self.frozen_caches, self.hot = {}, {}, {}
        self.handled = []
        self.inflight = set()
        self.outputs = []
        self.effects = []
