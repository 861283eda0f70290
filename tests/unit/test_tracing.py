"""Tracing: a traceparent in Kafka headers links edge -> stage A -> stage B into one trace."""

from __future__ import annotations

import contextlib
import re
import timeit
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app import tracing
from app.settings import Settings


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on, spans kept in memory; off again afterwards."""
    memory = InMemorySpanExporter()
    tracing.use_exporter(memory, batch=False)
    yield memory
    tracing.shutdown()


def env(type_: str, event_id: str) -> dict[str, str]:
    return {"id": event_id, "type": type_, "correlation_id": "order-1"}


def test_edge_to_stage_a_to_stage_b_is_one_trace(exporter: InMemorySpanExporter) -> None:
    to_a: list[tuple[str, bytes]] = [("other", b"kept")]
    with tracing.stage_span("http", env("order.placed", "e0")):
        tracing.inject(to_a)
    to_b: list[tuple[str, bytes]] = []
    with tracing.stage_span("inventory", env("order.placed", "e0"), to_a, partition=2, offset=41):
        tracing.inject(to_b)
    with tracing.stage_span("payments", env("inventory.reserved", "e1"), to_b, partition=5, offset=7):
        pass

    edge, a, b = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert [s.name for s in (edge, a, b)] == [
        "http order.placed",
        "inventory order.placed",
        "payments inventory.reserved",
    ]
    assert len({s.context.trace_id for s in (edge, a, b)}) == 1
    assert edge.parent is None
    assert a.parent is not None and a.parent.span_id == edge.context.span_id
    assert b.parent is not None and b.parent.span_id == a.context.span_id
    assert a.kind == SpanKind.CONSUMER and edge.kind == SpanKind.SERVER
    assert dict(a.attributes or {}) == {
        "orderstream.stage": "inventory",
        "orderstream.event_id": "e0",
        "orderstream.event_type": "order.placed",
        "orderstream.order_id": "order-1",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 41,
    }
    assert ("other", b"kept") in to_a
    assert [k for k, _ in to_a].count("traceparent") == 1


def test_inject_replaces_an_incoming_traceparent(exporter: InMemorySpanExporter) -> None:
    headers = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    with tracing.stage_span("orders", env("payment.processed", "e2"), headers):
        out = list(headers)
        tracing.inject(out)

    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == int("1" * 32, 16)
    assert dict(out)["traceparent"].decode().split("-")[2] == f"{span.context.span_id:016x}"


def test_extract_accepts_bytes_keys_and_mappings(exporter: InMemorySpanExporter) -> None:
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    for headers in ([(b"traceparent", parent.encode())], {"traceparent": parent}):
        with tracing.stage_span("x", env("t", "e"), headers):
            pass
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {int("a" * 32, 16)}


def test_bad_traceparent_starts_a_new_trace(exporter: InMemorySpanExporter) -> None:
    with tracing.stage_span("x", env("t", "e"), [("traceparent", b"garbage")]):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None


def test_off_by_default_records_nothing_and_still_carries_the_traceparent() -> None:
    # SPEC: a traceparent from the edge through every stage, the exporter off by default
    # (every message went without one while it was off; probe 19).
    tracing.configure(Settings())
    edge: list[tuple[str, bytes]] = []
    with tracing.stage_span("http", env("order.placed", "e")) as span:
        tracing.inject(edge)
    assert span is None and not tracing.enabled() and tracing.current_ids() is None
    [(name, parent)] = edge
    assert name == "traceparent" and re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-00", parent), parent
    hop: list[tuple[str, bytes]] = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-00")]
    with tracing.stage_span("inventory", env("inventory.reserve", "f"), edge):
        tracing.inject(hop)  # replaces what the output had
    assert hop == edge  # the same trace, hop after hop
    for garbage in (b"x" * 1_000_000, b"00-" + b"0" * 32 + b"-" + b"2" * 16 + b"-00", b"not a traceparent", None):
        out: list[tuple[str, bytes]] = []
        with tracing.stage_span("inventory", env("inventory.reserve", "g"), [("traceparent", garbage)]):
            tracing.inject(out)
        assert out[0][1] != garbage and len(out[0][1]) == 55  # a new trace, never the producer's value
    headers = edge

    def once() -> None:
        with tracing.stage_span("inventory", {"type": "order.placed"}, headers, partition=1, offset=2):
            tracing.inject([])

    n = 50_000
    best = min(timeit.repeat(once, number=n, repeat=5)) / n
    assert best < 3e-6, f"{best * 1e6:.2f} us per event"  # ~1.3 µs here with the machine busy


def test_console_exporter_is_configurable() -> None:
    try:
        tracing.configure(Settings(trace_exporter="console"))
        assert tracing.enabled()
    finally:
        tracing.shutdown()


def test_otlp_without_its_package_is_one_sentence() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        with pytest.raises(tracing.TracingError, match=r"pip install 'orderstream\[otlp\]'"):
            tracing.configure(Settings(trace_exporter="otlp"))
    else:
        with contextlib.suppress(Exception):
            tracing.configure(Settings(trace_exporter="otlp"))
        tracing.shutdown()


def test_off_the_traceparent_of_a_kafka_record_s_header_tuple_is_carried() -> None:
    # aiokafka gives a record's headers as a tuple of pairs.
    tracing.configure(Settings())
    parent = tracing.new_traceparent()
    out: list[tuple[str, bytes]] = []
    with tracing.stage_span("inventory", env("inventory.reserve", "t"), (("traceparent", parent),)):
        tracing.inject(out)
    assert out == [("traceparent", parent)]


def test_what_is_written_about_a_message_outside_a_span_continues_its_trace(exporter: InMemorySpanExporter) -> None:
    # A dead letter (written outside any span) joins the failed message's trace, exporter on or off.
    parent = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    [(name, value)] = tracing.continued((("traceparent", parent),))
    assert name == "traceparent" and value[3:35] == b"a" * 32
    tracing.shutdown()
    assert tracing.continued((("traceparent", parent),)) == [("traceparent", parent)]
    [(_, fresh)] = tracing.continued((("traceparent", b"garbage"),))
    assert fresh != b"garbage" and len(fresh) == 55
    assert tracing.current_traceparent() is None  # outside any span
    with tracing.stage_span("dead_letters", env("event.processing.failed", "l"), [("traceparent", parent)]):
        kept = tracing.current_traceparent()
    assert kept == parent.decode()
    assert tracing.headers_of(kept) == [("traceparent", parent)]
    assert tracing.headers_of("garbage") == [] and tracing.headers_of(None) == []
