"""Structured logs: text or JSON lines, each carrying the event a stage is handling."""

from __future__ import annotations

import io
import json
import logging
import timeit
from collections.abc import Iterator

import pytest

from app import logs
from app.settings import Settings

ENV = {"id": "ev-1", "type": "inventory.reserved", "correlation_id": "order-9"}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Configure logging into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()
    yield buf
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def lines(buf: io.StringIO) -> list[str]:
    logs.flush()  # lines below WARNING are written in batches (the engine flushes before each commit)
    return [line for line in buf.getvalue().splitlines() if line]


def test_json_lines_parse_and_carry_the_event_fields_inside_event_context(captured: io.StringIO) -> None:
    logs.configure(Settings(log_format="json", log_level="debug"), stream=captured)
    log = logging.getLogger("orderstream.test")

    log.info("before")
    with logs.event_context(stage="inventory", partition=3, offset=1207, env=ENV):
        log.info("reserved %s", "widget")
        logging.getLogger("faust.tables").warning("a faust logger, inside")
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("failed")
    log.info("after")

    records = [json.loads(line) for line in lines(captured)]  # every line is one JSON object
    assert [r["message"] for r in records] == ["before", "reserved widget", "a faust logger, inside", "failed", "after"]
    inside = records[1:4]
    for r in inside:
        assert {k: r[k] for k in logs.EVENT_FIELDS} == {
            "event_id": "ev-1",
            "event_type": "inventory.reserved",
            "order_id": "order-9",
            "correlation_id": "order-9",
            "stage": "inventory",
            "partition": 3,
            "offset": 1207,
        }
    assert "boom" in records[3]["exc_info"]
    assert records[2]["logger"] == "faust.tables" and records[2]["level"] == "WARNING"
    for r in (records[0], records[4]):
        assert "event_id" not in r


def test_text_lines_append_the_event_fields(captured: io.StringIO) -> None:
    logs.configure(Settings(log_format="text"), stream=captured)

    with logs.event_context(stage="payments", partition=0, offset=7, env=ENV):
        logging.getLogger("orderstream.test").info("charged")

    (line,) = lines(captured)
    assert line.endswith(
        "orderstream.test: charged [event_id=ev-1 event_type=inventory.reserved order_id=order-9 "
        "correlation_id=order-9 stage=payments partition=0 offset=7]"
    )


def test_log_level_setting_is_applied(captured: io.StringIO) -> None:
    logs.configure(Settings(log_level="warn"), stream=captured)

    logging.getLogger("orderstream.test").info("hidden")
    logging.getLogger("aiokafka").warning("shown")

    assert [line.rsplit(": ", 1)[1] for line in lines(captured)] == ["shown"]
    assert not logging.getLogger("aiokafka.producer").isEnabledFor(logging.INFO)


def test_contexts_nest_and_restore() -> None:
    with logs.event_context(stage="a", partition=1, offset=1, env=ENV):
        with logs.event_context(stage="b", partition=2, offset=2, env={**ENV, "id": "ev-2"}):
            assert logs.current_fields()["event_id"] == "ev-2"
        assert logs.current_fields()["stage"] == "a"
    assert logs.current_fields() == {}


def test_settings_are_logged_once_with_secrets_redacted(captured: io.StringIO) -> None:
    logs.configure(Settings(log_format="json"), stream=captured)

    logs.log_settings(Settings(admin_token="s3cret", log_format="json"))

    (line,) = lines(captured)
    assert "s3cret" not in line
    assert json.loads(line)["settings"]["admin_token"] == "***"


def test_event_context_costs_under_two_microseconds_when_nothing_is_logged() -> None:
    def once() -> None:
        with logs.event_context(stage="inventory", partition=1, offset=5, env=ENV):
            pass

    n = 50_000
    best = min(timeit.repeat(once, number=n, repeat=5)) / n
    assert best < 2e-6, f"{best * 1e6:.2f} us per event"


def test_json_lines_carry_the_trace_when_tracing_is_on(captured: io.StringIO) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from app import tracing

    logs.configure(Settings(log_format="json"), stream=captured)
    memory = InMemorySpanExporter()
    tracing.use_exporter(memory, batch=False)
    try:
        with tracing.stage_span("orders", ENV), logs.event_context(stage="orders", partition=0, offset=1, env=ENV):
            logging.getLogger("orderstream.test").info("confirmed")
    finally:
        tracing.shutdown()

    (record,) = [json.loads(line) for line in lines(captured)]
    (span,) = memory.get_finished_spans()
    assert record["trace_id"] == f"{span.context.trace_id:032x}"
    assert record["span_id"] == f"{span.context.span_id:016x}"
    assert record["order_id"] == "order-9"
    assert record["time"].endswith("+00:00")


def test_text_lines_escape_control_and_bidi_characters(captured: io.StringIO) -> None:
    logs.configure(Settings(log_format="text"), stream=captured)
    env = {**ENV, "correlation_id": "o\u202e9"}
    with logs.event_context(stage="notifications", partition=0, offset=1, env=env):
        logging.getLogger("orderstream.test").info("to=%s", "a\x00b@x.co\n2026-01-01 INFO forged: line")

    (line,) = lines(captured)  # a newline in a value does not forge a second record
    assert "to=a\\x00b@x.co\\x0a2026-01-01 INFO forged: line" in line
    assert "order_id=o\\u202e9" in line and "\u202e" not in line


def test_a_library_s_repeated_errors_are_counted_not_written(captured: io.StringIO) -> None:
    """With the broker down aiokafka logged ~3,000 lines a second per worker (probe 22)."""
    logs.configure(Settings(), stream=captured)
    counted = next(f for h in logging.getLogger().handlers for f in h.filters if isinstance(f, logs.RepeatsCounted))
    library = logging.getLogger("aiokafka.conn")
    ours = logging.getLogger("orderstream.api")
    for n in range(500):
        library.error("Unable connect to node with id %s: %s", 1, f"refused {n}")
        ours.warning("the broker did not take a %s", "order.placed")
    library.info("a library's info line %s", 1)
    library.info("a library's info line %s", 1)
    written = lines(captured)
    assert sum("Unable connect" in line for line in written) == 1
    assert sum("did not take" in line for line in written) == 500  # the app's own lines all go out
    assert sum("info line" in line for line in written) == 2
    counted.window = 0.0  # the window has passed: the next one says how many were held back
    library.error("Unable connect to node with id %s: %s", 1, "refused again")
    assert "[499 more like it since the last one written]" in lines(captured)[-1]
    counted.window = 10.0
    for error in (ValueError, ValueError, MemoryError):  # another failure under one template is written
        try:
            raise error("x")
        except error:
            logging.getLogger("aiohttp.server").exception("Error handling request")
    assert sum("MemoryError" in line for line in lines(captured)) == 1
    assert sum("ValueError" in line for line in lines(captured)) == 1


def test_every_escaped_character_is_unprintable_so_printable_lines_skip_the_escaping() -> None:
    from app.logs import _UNSAFE, TextFormatter

    assert all(not chr(c).isprintable() for c in _UNSAFE)
    record = logging.LogRecord("x", logging.INFO, "f", 1, "a\u202eb\x1b[31m\tc ×", (), None)
    line = TextFormatter().format(record)
    assert "a\\u202eb\\x1b[31m\tc ×" in line
    stamp = logging.Formatter().formatTime(record)
    assert line.startswith(stamp)  # the cached seconds read as logging's own


def test_lines_are_written_in_batches_and_a_warning_writes_them_at_once_in_order(captured: io.StringIO) -> None:
    logs.configure(Settings(log_format="text", log_level="info"), stream=captured)
    log = logging.getLogger("orderstream.test")
    log.info("one")
    log.info("two")
    assert captured.getvalue() == ""  # kept: the engine flushes before each commit and once a second
    log.warning("three")
    assert [line.split(": ", 1)[1] for line in captured.getvalue().splitlines()] == ["one", "two", "three"]
    log.info("four")
    logs.flush()
    assert captured.getvalue().splitlines()[-1].endswith(": four")
