"""Logging: one handler on the root logger, text or JSON, with the event being handled on every line.

``configure(settings)`` is called once at start-up (``app.main``) and again by the worker
when mode would set up its own logging, so faust's, mode's and aiokafka's loggers all go
through the same handler. ``log_format=json`` writes one JSON object per line
(python-json-logger: it is a plain ``logging.Formatter``, so third-party loggers need no
wrapping); ``text`` writes one human line.

A stage wraps the handling of each event in ``event_context(...)``. It only sets a
context variable (well under 2 µs, see ``tests/unit/test_logs.py``); the fields are read
by a filter on the handler when a record is actually emitted::

    with logs.event_context(stage="inventory", partition=3, offset=1207, env=envelope):
        log.info("reserved %s", product_id)   # carries event_id, event_type, order_id, ...
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from app.settings import Settings

#: The fields every line logged inside ``event_context`` carries, in this order.
EVENT_FIELDS = ("event_id", "event_type", "order_id", "correlation_id", "stage", "partition", "offset")

#: Settings' level names (faust's ``-l`` names) -> logging levels.
LEVELS = {
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

_EVENT: ContextVar[tuple[str, int, int, Mapping[str, Any]] | None] = ContextVar("orderstream_event", default=None)


class event_context:
    """Mark the records logged inside the block with the event a stage is handling.

    ``env`` is the event's envelope; ``order_id`` is its ``correlation_id``. Nesting is fine
    (the inner event wins until its block ends); it works across ``await`` in one task.
    """

    __slots__ = ("_token", "_value")

    def __init__(self, *, stage: str, partition: int, offset: int, env: Mapping[str, Any]) -> None:
        self._value = (stage, partition, offset, env)
        self._token: Token[Any] | None = None

    def __enter__(self) -> event_context:
        self._token = _EVENT.set(self._value)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            _EVENT.reset(self._token)


def current_fields() -> dict[str, Any]:
    """Return the event fields of the current context (empty outside ``event_context``)."""
    current = _EVENT.get()
    return {} if current is None else dict(_fields(current))


def _fields(current: tuple[str, int, int, Mapping[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """``(name, value)`` of :data:`EVENT_FIELDS` for an :func:`event_context`'s value."""
    stage, partition, offset, env = current
    correlation = env.get("correlation_id")
    return (
        ("event_id", env.get("id")),
        ("event_type", env.get("type")),
        ("order_id", correlation),
        ("correlation_id", correlation),
        ("stage", stage),
        ("partition", partition),
        ("offset", offset),
    )


class EventFields(logging.Filter):
    """Copy the current event's fields (and the trace id, when tracing) onto each emitted record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields (an ``extra`` of the same name wins); never drops a record."""
        attrs = record.__dict__
        current = _EVENT.get()
        if current is not None:
            for key, value in _fields(current):
                if key not in attrs:
                    attrs[key] = value
        trace = _current_trace_ids()
        if trace and "trace_id" not in attrs:
            record.trace_id, record.span_id = trace
        return True


def _current_trace_ids() -> tuple[str, str] | None:
    from app import tracing  # late: tracing imports opentelemetry only when it is on

    return tracing.current_ids()


class RepeatsCounted(logging.Filter):
    """A library's warning or error said again within :attr:`window` seconds is counted, not written.

    With the broker down, aiokafka logs each failed connection attempt of each client: about
    3,000 lines a second per worker under load (probe 22), hundreds of megabytes an hour. The
    first line of a kind goes out, the repeats of the next ``window`` seconds are counted, and
    the next one written says how many there were. The app's own lines are never held back.
    """

    #: Loggers whose lines are counted when repeated (the app's own are ``orderstream.*``, ``app.*``).
    LIBRARIES = ("aiokafka", "kafka", "asyncio", "faust", "mode", "aiohttp")

    def __init__(self, window: float = 10.0) -> None:
        super().__init__()
        self.window = window
        #: ``(logger, template)`` -> [when the last one was written, repeats held back since]
        self._seen: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass a line unless the same one (logger, message template, exception type) passed within ``window``."""
        if record.levelno < logging.WARNING or not record.name.startswith(self.LIBRARIES):
            return True
        failure = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, f"{record.msg}{failure}")  # another exception under one template is another line
        seen = self._seen.get(key)
        if seen is not None and record.created - seen[0] < self.window:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{int(seen[1])} more like it since the last one written]"
        if len(self._seen) >= 10_000:
            self._seen.clear()
        self._seen[key] = [record.created, 0]
        return True


class TextFormatter(logging.Formatter):
    """``2026-12-02 01:02:03,456 INFO orderstream.x: message [stage=... order_id=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``2026-12-02 01:02:03,456`` (local time, as logging's default), the seconds formatted once a second."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime(self.default_time_format, self.converter(record.created)))
        return f"{self._second[1]},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line before any traceback, with control and bidi characters escaped (one record, one line)."""
        # What the format string above gives, without the %-style machinery (a line per event).
        return _escaped(f"{record.asctime} {record.levelname} {record.name}: {record.message}")

    def format(self, record: logging.LogRecord) -> str:
        """Format the line, then append the event fields that are present."""
        line = super().format(record)
        attrs = record.__dict__
        extra = [f"{k}={v}" for k in _TEXT_FIELDS if (v := attrs.get(k)) is not None]
        if not extra:
            return line
        head, sep, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} [{_escaped(' '.join(extra))}]{sep}{rest}"


_TEXT_FIELDS = (*EVENT_FIELDS, "trace_id")


def _escaped(text: str) -> str:
    """``text`` with :data:`_UNSAFE` characters escaped; every one of them is unprintable, so a
    printable text (nearly every line) is returned as it is without the per-character lookups."""
    return text if text.isprintable() else text.translate(_UNSAFE)


#: Characters a text log line shows escaped: C0 controls but tab (a newline would forge a
#: record), DEL, and the bidi controls that reorder what a terminal shows.
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c != 0x09} | {
    c: f"\\u{c:04x}" for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def json_formatter() -> logging.Formatter:
    """One JSON object per record: level, logger, message, event fields, any ``extra``, ISO-8601 UTC time."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        json_ensure_ascii=False,
    )


HANDLER_NAME = "orderstream"


class LinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes lines below WARNING in batches: at :func:`flush` (the engine's
    commits and its once-a-second tick), at :data:`BATCH` lines, and at exit.

    One write and flush per line was a third of a line's cost, and the stages write one per event
    they handle (SPEC). The engine flushes before each commit, so the lines of what a commit
    lands are written before it lands; a SIGKILL loses at most lines of work not committed, which
    is handled, and logged, again. A warning or an error writes everything at once.
    """

    BATCH = 256

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the formatted line; write what is kept if this one is a warning or more, or there are many."""
        try:
            self.pending.append(self.format(record))
        except Exception:  # noqa: BLE001 - as logging's own handlers: report it and go on
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the kept lines, then flush the stream."""
        self.acquire()
        try:
            if self.pending and self.stream:
                lines, self.pending = self.pending, []
                self.stream.write("\n".join(lines) + "\n")
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()


def flush() -> None:
    """Write the lines the handler keeps (the engine calls it before each commit and once a second)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LinesHandler):
            handler.flush()


def configure(settings: Settings, stream: IO[str] | None = None, logfile: str | None = None) -> logging.Handler:
    """Route every logger through one handler with ``settings.log_format`` at ``settings.log_level``."""
    handler: logging.Handler
    handler = LinesHandler(open(logfile, "a", encoding="utf-8") if logfile else stream or sys.stderr)  # noqa: SIM115
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(json_formatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(RepeatsCounted())
    handler.addFilter(EventFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        # Replace our own handler (configure runs at import and again at worker start) and
        # mode's default one; leave others (pytest's capture handlers) alone.
        if old.get_name() == HANDLER_NAME or type(old).__module__.startswith(("colorlog", "mode")):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[settings.log_level])
    # Neither format shows where a call came from, its thread or its process: skip
    # collecting them for every record (the Logging HOWTO's "Optimization" switches; the
    # stack walk alone was 3 % of the handler path, which logs each notification).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.captureWarnings(True)
    return handler


def log_settings(settings: Settings, logger: logging.Logger | None = None) -> None:
    """Log the settings in effect once, secrets redacted."""
    redacted = settings.redacted()
    (logger or logging.getLogger("orderstream.settings")).info(
        "settings in effect: %s",
        " ".join(f"{k}={v}" for k, v in redacted.items()),
        extra={"settings": redacted},
    )
