"""Prometheus metrics, served at ``/metrics``. No label ever carries customer data."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter(
    "orderstream_events_processed_total",
    "Messages handled per stage and type ('replayed' = a duplicate whose outputs were re-sent).",
    ["stage", "type"],
    registry=REGISTRY,
)
HANDLE_SECONDS = Histogram(
    "orderstream_handle_seconds",
    "Time to handle one message per stage.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "orderstream_dead_letters_total", "Messages sent to a dead-letter topic per stage.", ["stage"], registry=REGISTRY
)
ORDERS_PLACED = Counter("orderstream_orders_placed_total", "Orders accepted at the HTTP edge.", registry=REGISTRY)
ORDER_OUTCOMES = Counter(
    "orderstream_order_outcomes_total", "Orders reaching a final status.", ["status"], registry=REGISTRY
)
GATEWAY_CALLS = Counter(
    "orderstream_gateway_calls_total", "Payment gateway charges by result.", ["result"], registry=REGISTRY
)
GATEWAY_INFLIGHT = Gauge("orderstream_gateway_inflight", "Gateway charges in flight.", registry=REGISTRY)
NOTIFICATIONS = Counter(
    "orderstream_notifications_total", "Notifications by result.", ["notifier", "result"], registry=REGISTRY
)
HTTP_REQUESTS = Counter(
    "orderstream_http_requests_total", "HTTP requests by route and status.", ["route", "status"], registry=REGISTRY
)
REDRIVEN = Counter("orderstream_dead_letters_redriven_total", "Dead letters re-injected.", registry=REGISTRY)
ORDER_LATENCY = Histogram(
    "orderstream_order_latency_seconds",
    "Placed to final latency of orders, by outcome (measured on the worker that made the order final).",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)


def observe_order_latency(outcome: str, seconds: float) -> None:
    """Record one order's placed to final latency."""
    ORDER_LATENCY.labels(outcome).observe(seconds)


def render() -> bytes:
    """Return all metrics in the Prometheus text format."""
    return generate_latest(REGISTRY)
