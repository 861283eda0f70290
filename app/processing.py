"""The loop every stage's agent runs: decode → dedupe → handle → record → send, or dead-letter.

Faust's exactly-once alone is not enough (duplicates after SIGKILL, rebalance
fencing), so every stage is idempotent on the input event id. A handler's table
writes are held back (``PENDING``) until it returns; then the loop writes the event's
dedupe record (``seen/<event id>`` in the stage's store: its outputs *and* its
writes) and its time-index entry, then the writes, then sends the outputs. All of them
share one changelog partition, so a crash keeps a prefix of them: with the dedupe
record gone, nothing of the event survived and it is handled afresh; with it, a
redelivered input (the same message again, after a crash or a rebalance) re-applies
the stored writes and re-sends exactly the stored outputs (same ids) instead of
deciding again, so a crash between the table write and the send strands nothing, and
a half-flushed effect is completed; downstream handlers dedupe by id. Another copy of
an already handled event (a new message with a known id) is dropped, so a duplicate
does not cascade through every stage. Dedupe records expire after the store's
``dedupe_retention`` (pruned a batch at a time as events flow).

A message that is not JSON, not an envelope, of an unknown type or version, of a
type that does not travel on the stage's topic, with a payload that does not match
its record (``schemas.payloads``), or whose handler keeps failing after bounded
retries goes to the stage's dead-letter topic with the error, a short stack summary,
its source topic/partition/offset and the original value as it came; the input
offset then moves on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from faust.types import EventT, StreamT

from app import codec, metrics
from app.codec import Undecodable
from app.domain.common import Emit
from schemas.envelope import Envelope, EnvelopeError, derived_id, make
from schemas.registry import current_version, read

log = logging.getLogger("orderstream.processing")

#: Key prefix of the dedupe records in each stage's store.
SEEN = "seen/"
#: Key prefix of the time index of the dedupe records (``seen_at/<epoch ms>/<event id>``).
SEEN_AT = "seen_at/"


#: Key prefix of each source partition's watermark: the highest input offset whose writes all landed.
APPLIED = "applied/"


def msg_source(event: EventT) -> str:
    """``topic:partition`` of the message ``event`` came from."""
    return f"{event.message.topic}:{event.message.partition}"


async def until_handled(store: Store, event_id: str, timeout: float) -> bool:
    """Wait until this worker's copy of ``store`` holds the effect of the event ``event_id``.

    Woken by the write of the event's dedupe record (:meth:`Store.written`); ``False``
    if that did not happen within ``timeout`` seconds.
    """
    key = f"{SEEN}{event_id}"
    deadline = time.monotonic() + timeout
    while key not in store.table:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await store.written(key, min(remaining, 1.0))
    return True


def seen_at_key(at_ms: int, event_id: str) -> str:
    """Index key of a dedupe record written at ``at_ms``: sorts by time."""
    return f"{SEEN_AT}{at_ms:015d}/{event_id}"


#: Longest error text kept in a dead letter or a log line (an error can quote a huge input).
MAX_ERROR_CHARS = 2000
#: Largest dead letter sent whole. Faust's producer refuses records over 1,000,000 bytes
#: (``producer_max_request_size``), and a dead letter is its original plus error and stack,
#: so an input close to the broker's 1 MiB limit cannot be kept whole: its dead letter keeps
#: the first ``OVERSIZED_PREFIX_BYTES`` (``original_kind: "truncated"``, never redriven);
#: the whole message stays readable at its source topic/partition/offset.
MAX_DEAD_LETTER_BYTES = 960_000
OVERSIZED_PREFIX_BYTES = 64 * 1024

#: One message to send: (logical topic, key, envelope).
Out = tuple[str, str, Envelope]
Handler = Callable[[Envelope, EventT], Awaitable[list[Out] | None]]
Sender = Callable[[str, str, Envelope], Awaitable[Any]]


class Store(Protocol):
    """A stage's records (``tables.Store``): one table, one changelog topic."""

    name: str
    table: Any
    dedupe_retention: float

    def apply(self, writes: list[list[Any]]) -> None: ...

    def keys_between(self, partition: int, start: str, stop: str, limit: int) -> list[str]: ...

    async def written(self, key: str, timeout: float) -> None: ...


#: Marks a key the current event deletes.
DELETED: Any = object()


class Pending:
    """The writes of the event being handled, not yet in its stage's table."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writes: dict[str, Any] = {}

    def as_list(self) -> list[list[Any]]:
        """The writes in order, ``[key, value]`` each (value ``None``: delete)."""
        return [[k, None if v is DELETED else v] for k, v in self.writes.items()]


#: The pending writes of the event this task is handling (set by :func:`run`, used by ``tables``).
PENDING: ContextVar[Pending | None] = ContextVar("orderstream_pending_writes", default=None)


@dataclass(frozen=True)
class Stage:
    """What the loop needs to know about one stage."""

    name: str
    source_topic: str
    attempts: int = 3
    backoff: float = 0.05
    #: Expired dedupe records are pruned once per this many events of a partition.
    prune_every: int = 256
    #: At most this many dedupe records are pruned at a time.
    prune_batch: int = 512


class PermanentError(Exception):
    """A handler failure that retrying cannot fix."""


def envelopes(emits: Iterable[Emit], cause: Envelope, *, start: int = 0) -> list[Out]:
    """Wrap a decision's emits in envelopes whose ids derive from the cause (stable on replay)."""
    out: list[Out] = []
    for i, e in enumerate(emits, start=start):
        env = make(
            e.type,
            e.entity_type,
            e.entity_id,
            e.payload,
            correlation_id=cause.get("correlation_id") or cause["entity_id"],
            causation_id=cause["id"],
            event_id=derived_id(cause["id"], i),
            version=current_version(e.type),
        )
        out.append((e.topic, e.key, env))
    return out


def decode(value: Any, topic: str | None = None) -> Envelope:
    """Turn a decoded message value (from logical ``topic``) into a checked current-version envelope.

    Raises why not (see :func:`schemas.registry.read`); ``value`` is left untouched.
    """
    if isinstance(value, Undecodable):
        raise EnvelopeError(value.error)
    return read(value, topic)


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def dead_letter(stage: Stage, event: EventT, error: BaseException, attempts: int) -> Envelope:
    """Describe a message that could not be processed as an ``event.processing.failed`` envelope."""
    msg = event.message
    value = event.value
    if isinstance(value, Undecodable):
        original: Any = value.raw.decode("utf-8", errors="replace")
        original_kind = "text"
    else:
        original, original_kind = value, "json"
    key = msg.key.decode("utf-8", errors="replace") if isinstance(msg.key, bytes) else msg.key
    stack = traceback.format_exception(type(error), error, error.__traceback__, limit=4)
    source_id = _text_field(value, "id")
    dl_id = derived_id(f"{msg.topic}/{msg.partition}/{msg.offset}", 0)
    payload = {
        "dlq_id": dl_id,
        "stage": stage.name,
        "error": _error_text(error),
        "stack": "".join(stack)[-2000:],
        "source_topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "key": key,
        "attempts": attempts,
        "original": original,
        "original_kind": original_kind,
        "original_id": source_id,
    }
    letter = make(
        "event.processing.failed",
        "dead_letter",
        dl_id,
        payload,
        correlation_id=_text_field(value, "correlation_id") or dl_id,
        causation_id=source_id,
        event_id=dl_id,
    )
    if len(codec.dumps(letter)) > MAX_DEAD_LETTER_BYTES:
        raw = msg.value if isinstance(msg.value, bytes) else codec.dumps(original)
        payload["original"] = raw[:OVERSIZED_PREFIX_BYTES].decode("utf-8", errors="replace")
        payload["original_kind"] = "truncated"
        payload["original_bytes"] = len(raw)
    return letter


def _text_field(value: Any, name: str) -> str | None:
    """``value[name]`` when ``value`` is an object and that field a non-empty string (a dead letter must be valid)."""
    field = value.get(name) if isinstance(value, dict) else None
    return field if isinstance(field, str) and field else None


def is_redelivery(prior: dict[str, Any], event: EventT) -> bool:
    """Whether ``event`` is the very message ``prior`` recorded, delivered again."""
    msg = event.message
    return bool(prior.get("source") == msg_source(event) and msg.offset <= prior.get("offset", -1))


async def run(
    stage: Stage,
    stream: StreamT[Any],
    handle: Handler,
    *,
    store: Store,
    send: Sender,
    send_dead_letter: Callable[[Envelope], Awaitable[Any]],
) -> None:
    """Consume ``stream`` forever with dedupe, retries and dead-lettering."""
    since_prune: dict[int, int] = {}
    async for event in stream.events():
        started = time.perf_counter()
        partition = event.message.partition
        since_prune[partition] = since_prune.get(partition, 0) + 1
        if since_prune[partition] >= stage.prune_every:
            since_prune[partition] = 0
            prune_seen(stage, store, partition)
        try:
            env = decode(event.value, stage.source_topic)
        except Exception as exc:  # noqa: BLE001 - whatever cannot be read is dead-lettered, never crashes the stage
            await _to_dlq(stage, event, exc, 1, send_dead_letter)
            continue
        seen_key = f"{SEEN}{env['id']}"
        watermark_key = f"{APPLIED}{msg_source(event)}"
        prior = store.table.get(seen_key)
        if prior is not None:
            if is_redelivery(prior, event):
                # The same message again (a crash or rebalance before its offset committed):
                # its outputs may have been lost with the crash, so send them again, and
                # complete its writes if the crash cut them short. The source partition's
                # watermark is written after an event's last write, so a watermark at or
                # past this offset means they all landed (and later events' too, which a
                # replay must not undo: faust can redeliver an event without the ones
                # after it).
                metrics.EVENTS.labels(stage.name, "replayed").inc()
                if (store.table.get(watermark_key) or -1) < prior["offset"]:
                    if "at" in prior:
                        store.table[seen_at_key(prior["at"], env["id"])] = 1
                    store.apply(prior.get("writes") or [])
                    store.table[watermark_key] = prior["offset"]
                for topic, key, out_env in prior["outputs"]:
                    await send(topic, key, out_env)
            else:
                # Another copy of an event already handled: what it caused is already out.
                metrics.EVENTS.labels(stage.name, "duplicate").inc()
            continue
        outputs: list[Out] | None = None
        error: BaseException | None = None
        attempt = 0
        pending = Pending(store)
        for attempt in range(1, stage.attempts + 1):
            pending = Pending(store)  # a failed attempt's writes are dropped with it
            token = PENDING.set(pending)
            try:
                outputs = await handle(env, event)
                error = None
                break
            except PermanentError as exc:
                error = exc
                break
            except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
                error = exc
                if attempt < stage.attempts:
                    await asyncio.sleep(stage.backoff * 2 ** (attempt - 1))
            finally:
                PENDING.reset(token)
        if error is not None:
            await _to_dlq(stage, event, error, attempt, send_dead_letter)
            continue
        outs = outputs or []
        msg = event.message
        writes = pending.as_list()
        # The dedupe record goes first and carries every write: all of them share one
        # changelog partition, so after a crash either it survived (and the writes can be
        # replayed from it) or none of the writes did.
        at_ms = int(time.time() * 1000)
        record = {
            "outputs": [[t, k, e] for t, k, e in outs],
            "writes": writes,
            "source": msg_source(event),
            "offset": msg.offset,
            "at": at_ms,
        }
        store.apply([[seen_key, record], [seen_at_key(at_ms, env["id"]), 1], *writes])
        store.table[watermark_key] = max(store.table.get(watermark_key) or -1, msg.offset)
        for topic, key, out_env in outs:
            await send(topic, key, out_env)
        metrics.EVENTS.labels(stage.name, env["type"]).inc()
        metrics.HANDLE_SECONDS.labels(stage.name).observe(time.perf_counter() - started)


def prune_seen(stage: Stage, store: Store, partition: int) -> int:
    """Delete this partition's dedupe records older than the store's retention; return how many.

    Runs inside the current event (the deletions go to its changelog partition). An
    event redelivered or duplicated after its record expired would be handled again,
    so the retention must exceed any redelivery delay (a rebalance, a restart) by far.
    """
    cutoff_ms = int((time.time() - store.dedupe_retention) * 1000)
    expired = store.keys_between(partition, SEEN_AT, seen_at_key(max(cutoff_ms, 0), ""), stage.prune_batch)
    for key in expired:
        store.table.pop(SEEN + key.rsplit("/", 1)[1], None)
        store.table.pop(key, None)
    if expired:
        metrics.EVENTS.labels(stage.name, "dedupe_pruned").inc(len(expired))
    return len(expired)


async def _to_dlq(
    stage: Stage,
    event: EventT,
    error: BaseException,
    attempts: int,
    send_dead_letter: Callable[[Envelope], Awaitable[Any]],
) -> None:
    msg = event.message
    log.warning(
        "dead-lettering %s[%s]@%s in stage %s after %d attempt(s): %s",
        msg.topic,
        msg.partition,
        msg.offset,
        stage.name,
        attempts,
        _error_text(error),
    )
    metrics.DEAD_LETTERS.labels(stage.name).inc()
    await send_dead_letter(dead_letter(stage, event, error, attempts))
