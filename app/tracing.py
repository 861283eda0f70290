"""Tracing: OpenTelemetry spans per stage, linked by a W3C ``traceparent`` in Kafka headers.

The exporter is off by default (``trace_exporter=none``): no span is recorded, but the
``traceparent`` still rides the Kafka headers from the HTTP edge through every stage
(SPEC), unchanged from hop to hop, as the OpenTelemetry API without an SDK propagates a
context it does not record: ``stage_span`` notes the incoming one (a new trace at the edge,
or for an input that carries none) and ``inject`` copies it onto each output, about a
microsecond per event (``tests/unit/test_tracing.py``). With an exporter, each stage's handling of an event is a
span named ``<stage> <event type>``, the child of the span that produced the event, so one
order is one trace from the HTTP edge through every stage::

    with tracing.stage_span("inventory", env, event.headers, partition=p, offset=o):
        ...
        headers: list[tuple[str, bytes]] = []
        tracing.inject(headers)            # the outgoing event's parent is this span
        await topic.send(key=k, value=out, headers=headers)

The edge does the same with ``stage_span("http", env, request_headers_as_pairs)``.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.settings import Settings

TRACE_HEADERS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
_EMPTY = Context()

#: The tracer while tracing is on, else None (the fast path tests only this).
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None

Headers = list[tuple[str, bytes]]

#: Exporter off: the ``traceparent`` of the input being handled (what its outputs carry on).
_passing: ContextVar[bytes | None] = ContextVar("orderstream_traceparent", default=None)
#: A W3C traceparent as this version writes it: version 00, trace id, parent id, flags.
_TRACEPARENT = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACEPARENT_BYTES = 55


class _Passthrough:
    """Exporter off: no span, the input's ``traceparent`` is what ``inject`` copies while handling it."""

    __slots__ = ("token", "value")

    def __init__(self, value: bytes) -> None:
        self.value = value
        self.token: Token[bytes | None] | None = None

    def __enter__(self) -> None:
        self.token = _passing.set(self.value)

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _passing.reset(self.token)


def _valid(value: object) -> bytes | None:
    """``value`` as a traceparent's bytes if it is one, else None (a header's value may be null, or anything).

    Checked before it is passed on: a producer's header could be anything (a megabyte of it
    would be copied onto every output).
    """
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    if isinstance(raw, bytes) and len(raw) == _TRACEPARENT_BYTES and _TRACEPARENT.fullmatch(raw):
        return raw
    return None


def _carried(headers: Any) -> bytes | None:
    """The valid ``traceparent`` among ``headers`` (Kafka pairs or a mapping), else None."""
    if not headers:
        return None
    if type(headers) is list or type(headers) is tuple:  # a Kafka record's (a tuple): the engine's every event
        for key, value in headers:
            if key == "traceparent":
                return _valid(value)
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        name = key.decode("latin-1") if isinstance(key, bytes) else key
        if isinstance(name, str) and name.lower() == "traceparent":
            return _valid(value)
    return None


#: The ``traceparent`` a client sent with the HTTP request being answered (valid, else None).
_request: ContextVar[bytes | None] = ContextVar("orderstream_request_traceparent", default=None)


@contextlib.contextmanager
def request_parent(value: str | None) -> Iterator[None]:
    """While answering a request: its ``traceparent`` header, which the edge's span continues."""
    token = _request.set(_valid(value))
    try:
        yield
    finally:
        _request.reset(token)  # one connection answers its requests one after another in one task


def request_headers() -> Headers:
    """The current request's ``traceparent`` as Kafka-style headers (none when it sent none)."""
    value = _request.get()
    return [("traceparent", value)] if value is not None else []


def new_traceparent() -> bytes:
    """A new trace's ``traceparent`` (flags 00: nothing of it is recorded)."""
    return b"00-%032x-%016x-00" % (random.getrandbits(128) or 1, random.getrandbits(64) or 1)


class TracingError(RuntimeError):
    """The configured exporter cannot be used (one sentence)."""


def enabled() -> bool:
    """Whether spans are recorded."""
    return _tracer is not None


def configure(settings: Settings) -> None:
    """Set up the exporter named by ``settings.trace_exporter`` (``none`` turns tracing off)."""
    if settings.trace_exporter == "none":
        shutdown()
        return
    exporter: SpanExporter
    if settings.trace_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingError(
                "trace_exporter=otlp needs the OTLP exporter package: pip install 'orderstream[otlp]'."
            ) from None
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    use_exporter(exporter, service_name=settings.app_id)


def use_exporter(exporter: SpanExporter, *, service_name: str = "orderstream", batch: bool = True) -> TracerProvider:
    """Record spans into ``exporter`` (tests pass an ``InMemorySpanExporter`` with ``batch=False``)."""
    global _tracer, _provider
    shutdown()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("orderstream")
    return provider


def shutdown() -> None:
    """Flush and stop the exporter; tracing is off afterwards."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer, _provider = None, None


def inject(headers: Headers) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to Kafka ``headers``, in place."""
    if _tracer is None:
        passing = _passing.get()
        if passing is not None:
            if headers:
                headers[:] = [(k, v) for k, v in headers if k not in TRACE_HEADERS]
            headers.append(("traceparent", passing))
        return
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return
    headers[:] = [(k, v) for k, v in headers if k not in TRACE_HEADERS]
    headers.extend((k, v.encode()) for k, v in carrier.items())


def continued(headers: Any) -> Headers:
    """Kafka headers that carry on the trace of a message's ``headers`` (a new trace when none).

    For what the engine writes about a message outside any span (its dead letter): the
    letter joins the trace of the message that failed.
    """
    if _tracer is not None:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=extract(headers))
        if carrier:
            return [(k, v.encode()) for k, v in carrier.items()]
    return [("traceparent", _carried(headers) or new_traceparent())]


def headers_of(traceparent: str | None) -> Headers:
    """``traceparent`` (text kept from a message) as Kafka headers, if it is a valid one; else none."""
    value = _valid(traceparent)
    return [("traceparent", value)] if value is not None else []


def current_traceparent() -> str | None:
    """The ``traceparent`` that :func:`inject` would pass on here, as text (None outside any span)."""
    headers: Headers = []
    inject(headers)
    for key, value in headers:
        if key == "traceparent":
            return value.decode("latin-1")
    return None


def extract(headers: Iterable[tuple[str | bytes, bytes | str]] | Mapping[Any, Any] | None) -> Context:
    """Return the trace context carried by Kafka ``headers`` (an empty context when there is none)."""
    if _tracer is None or not headers:
        return _EMPTY
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    carrier: dict[str, str] = {}
    for key, value in pairs:
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name.lower() in TRACE_HEADERS and value is not None:
            carrier[name.lower()] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return _PROPAGATOR.extract(carrier) if carrier else _EMPTY


def stage_span(
    stage: str,
    env: Mapping[str, Any],
    headers: Iterable[tuple[str | bytes, bytes | str]] | Mapping[Any, Any] | None = None,
    *,
    partition: int | None = None,
    offset: int | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """Return a context manager: the span ``<stage> <event type>``, child of the headers' traceparent.

    Exporter off: no span; the headers' ``traceparent`` (a new one when they carry none)
    is what :func:`inject` passes on inside it.
    """
    if _tracer is None:
        return _Passthrough(_carried(headers) or new_traceparent())
    return _stage_span(_tracer, stage, env, headers, partition, offset)


@contextlib.contextmanager
def _stage_span(
    tracer: trace.Tracer,
    stage: str,
    env: Mapping[str, Any],
    headers: Any,
    partition: int | None,
    offset: int | None,
) -> Iterator[trace.Span]:
    attributes: dict[str, Any] = {
        "orderstream.stage": stage,
        "orderstream.event_id": str(env.get("id", "")),
        "orderstream.event_type": str(env.get("type", "")),
        "orderstream.order_id": str(env.get("correlation_id", "")),
    }
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    if offset is not None:
        attributes["messaging.kafka.offset"] = offset
    kind = trace.SpanKind.SERVER if stage == "http" else trace.SpanKind.CONSUMER
    with tracer.start_as_current_span(
        f"{stage} {env.get('type', '?')}", context=extract(headers), kind=kind, attributes=attributes
    ) as span:
        yield span


def current_ids() -> tuple[str, str] | None:
    """Return ``(trace_id, span_id)`` in hex of the current span, or None (also when tracing is off)."""
    if _tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
