"""Prometheus metrics, served at ``/metrics``. No label ever carries customer data.

Helpers for the engine and the edge (each a few label lookups, no I/O)::

    event_handled(stage, event_type, seconds)      # one event through a stage
    event_skipped(stage, reason)                   # "replayed" | "duplicate"
    dedupe_pruned(stage, count)
    observe_order_latency(outcome, seconds)        # placed -> final, outcome = final status
    set_lag(topic, partition, lag)                 # consumer lag in messages
    observe_produce(topic, seconds) / produce_failed(topic)
    observe_http(route, method, status, seconds)
"""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

# A counter's `_created` sample doubles the series and no dashboard reads it.
prometheus_client.disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...
PlatformCollector(registry=REGISTRY)  # python_info

#: Seconds buckets from sub-millisecond handling up to a minute (a slow gateway, a rebalance).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Placed -> final: dominated by commit intervals, the gateway and deadlines (payment_timeout 30 s).
ORDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

EVENTS_PROCESSED = Counter(
    "orderstream_events_processed_total",
    "Events handled per stage and event type (each once: replays and duplicates are in events_skipped).",
    ["stage", "type"],
    registry=REGISTRY,
)
EVENTS_SKIPPED = Counter(
    "orderstream_events_skipped_total",
    "Events a stage did not handle again: 'replayed' (a redelivery whose outputs were re-sent), 'duplicate'.",
    ["stage", "reason"],
    registry=REGISTRY,
)
DEDUPE_PRUNED = Counter(
    "orderstream_dedupe_pruned_total", "Expired dedupe records deleted per stage.", ["stage"], registry=REGISTRY
)
HANDLE_SECONDS = Histogram(
    "orderstream_handle_seconds",
    "Time to handle one event per stage.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "orderstream_dead_letters_total", "Messages sent to a dead-letter topic per stage.", ["stage"], registry=REGISTRY
)
ORDERS_PLACED = Counter("orderstream_orders_placed_total", "Orders accepted at the HTTP edge.", registry=REGISTRY)
ORDER_OUTCOMES = Counter(
    "orderstream_order_outcomes_total", "Orders reaching a final status.", ["status"], registry=REGISTRY
)
ORDER_LATENCY = Histogram(
    "orderstream_order_latency_seconds",
    "Time from order.placed to the order's final status, by outcome.",
    ["outcome"],
    buckets=ORDER_BUCKETS,
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "orderstream_consumer_lag",
    "Messages between this worker's committed position and the end of each assigned partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
PRODUCE_SECONDS = Histogram(
    "orderstream_produce_seconds",
    "Time from send to the broker's acknowledgement, per topic.",
    ["topic"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
PRODUCE_ERRORS = Counter(
    "orderstream_produce_errors_total", "Sends the broker did not acknowledge, per topic.", ["topic"], registry=REGISTRY
)
GATEWAY_CALLS = Counter(
    "orderstream_gateway_calls_total", "Payment gateway charges by result.", ["result"], registry=REGISTRY
)
GATEWAY_INFLIGHT = Gauge("orderstream_gateway_inflight", "Gateway charges in flight.", registry=REGISTRY)
HTTP_LONG_POLLS = Gauge(
    "orderstream_http_long_polls", "Long-polls (GET /orders/{id}?wait=) this worker holds now.", registry=REGISTRY
)
NOTIFICATIONS = Counter(
    "orderstream_notifications_total", "Notifications by result.", ["notifier", "result"], registry=REGISTRY
)
HTTP_REQUESTS = Counter(
    "orderstream_http_requests_total", "HTTP requests by route and status.", ["route", "status"], registry=REGISTRY
)
HTTP_SECONDS = Histogram(
    "orderstream_http_request_duration_seconds",
    "HTTP request duration by route (the route pattern, never the raw path) and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
REDRIVEN = Counter("orderstream_dead_letters_redriven_total", "Dead letters re-injected.", registry=REGISTRY)
#: What today's stage loop passes as a "type" but is a result: routed apart from the types.
_SKIP_REASONS = frozenset({"replayed", "duplicate"})


def event_handled(stage: str, event_type: str, seconds: float | None = None) -> None:
    """Count one event handled by ``stage`` (and its handling time)."""
    EVENTS_PROCESSED.labels(stage, event_type).inc()
    if seconds is not None:
        HANDLE_SECONDS.labels(stage).observe(seconds)


def event_skipped(stage: str, reason: str) -> None:
    """Count an event ``stage`` did not handle again (``replayed`` or ``duplicate``)."""
    EVENTS_SKIPPED.labels(stage, reason).inc()


def dedupe_pruned(stage: str, count: int) -> None:
    """Count expired dedupe records deleted."""
    if count:
        DEDUPE_PRUNED.labels(stage).inc(count)


def observe_order_latency(outcome: str, seconds: float) -> None:
    """Record the time from placed to final for an order that ended ``outcome`` (its final status)."""
    ORDER_LATENCY.labels(outcome).observe(max(seconds, 0.0))


def set_lag(topic: str, partition: int, lag: int) -> None:
    """Set the consumer lag (messages) of one assigned partition."""
    CONSUMER_LAG.labels(topic, str(partition)).set(max(lag, 0))


def forget_lag(topic: str, partition: int) -> None:
    """Drop a partition's lag series (its partition was revoked)."""
    try:
        CONSUMER_LAG.remove(topic, str(partition))
    except KeyError:
        pass


def observe_produce(topic: str, seconds: float) -> None:
    """Record one acknowledged send."""
    PRODUCE_SECONDS.labels(topic).observe(seconds)


def produce_failed(topic: str) -> None:
    """Count one send that failed."""
    PRODUCE_ERRORS.labels(topic).inc()


def observe_http(route: str, method: str, status: int | str, seconds: float) -> None:
    """Record one HTTP request: its count by status and its duration by route."""
    HTTP_REQUESTS.labels(route, str(status)).inc()
    HTTP_SECONDS.labels(route, method).observe(seconds)


class _EventsCompat:
    """``EVENTS.labels(stage, x).inc(n)`` as the current stage loop calls it, without mixing results into types.

    The loop passes ``replayed``/``duplicate``/``dedupe_pruned`` where an event type goes;
    those go to their own families. Call the helpers above in new code.
    """

    def labels(self, stage: str, kind: str) -> Any:
        if kind in _SKIP_REASONS:
            return EVENTS_SKIPPED.labels(stage, kind)
        if kind == "dedupe_pruned":
            return DEDUPE_PRUNED.labels(stage)
        return EVENTS_PROCESSED.labels(stage, kind)


EVENTS = _EventsCompat()


#: What :func:`render` writes: the classic text exposition format (prometheus-client's own
#: ``CONTENT_TYPE_LATEST`` now names 1.0.0, which Prometheus 2 servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render() -> bytes:
    """Return all metrics in the Prometheus text format."""
    return generate_latest(REGISTRY)
