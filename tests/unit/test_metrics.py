"""Metrics: the families the dashboards read, their helpers, and a clean exposition."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import metrics


def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels or {})


def test_results_are_not_mixed_into_event_types() -> None:
    metrics.event_handled("mtest", "order.placed", 0.002)
    metrics.EVENTS.labels("mtest", "replayed").inc()  # what today's stage loop calls
    metrics.EVENTS.labels("mtest", "duplicate").inc()
    metrics.EVENTS.labels("mtest", "dedupe_pruned").inc(5)
    metrics.event_skipped("mtest", "duplicate")
    metrics.dedupe_pruned("mtest", 2)

    types = {
        s.labels["type"]
        for f in text_string_to_metric_families(metrics.render().decode())
        if f.name == "orderstream_events_processed"
        for s in f.samples
        if s.labels.get("stage") == "mtest"
    }
    assert types == {"order.placed"}
    assert sample("orderstream_events_skipped_total", {"stage": "mtest", "reason": "duplicate"}) == 2
    assert sample("orderstream_events_skipped_total", {"stage": "mtest", "reason": "replayed"}) == 1
    assert sample("orderstream_dedupe_pruned_total", {"stage": "mtest"}) == 7
    assert sample("orderstream_handle_seconds_count", {"stage": "mtest"}) == 1


def test_handle_time_buckets_go_past_one_second() -> None:
    metrics.event_handled("mslow", "order.placed", 3.0)

    assert sample("orderstream_handle_seconds_bucket", {"stage": "mslow", "le": "1.0"}) == 0
    assert sample("orderstream_handle_seconds_bucket", {"stage": "mslow", "le": "5.0"}) == 1


def test_observe_order_latency_by_outcome() -> None:
    metrics.observe_order_latency("confirmed", 0.8)
    metrics.observe_order_latency("cancelled", 31.0)

    assert sample("orderstream_order_latency_seconds_bucket", {"outcome": "confirmed", "le": "1.0"}) >= 1  # type: ignore[operator]
    assert sample("orderstream_order_latency_seconds_bucket", {"outcome": "cancelled", "le": "30.0"}) == 0
    assert sample("orderstream_order_latency_seconds_count", {"outcome": "cancelled"}) == 1


def test_set_lag_and_forget_it() -> None:
    metrics.set_lag("os.orders", 3, 42)
    assert sample("orderstream_consumer_lag", {"topic": "os.orders", "partition": "3"}) == 42
    metrics.set_lag("os.orders", 3, -1)
    assert sample("orderstream_consumer_lag", {"topic": "os.orders", "partition": "3"}) == 0
    metrics.forget_lag("os.orders", 3)
    metrics.forget_lag("os.orders", 3)
    assert sample("orderstream_consumer_lag", {"topic": "os.orders", "partition": "3"}) is None


def test_produce_latency_and_errors() -> None:
    metrics.observe_produce("os.payments", 0.004)
    metrics.produce_failed("os.payments")

    assert sample("orderstream_produce_seconds_count", {"topic": "os.payments"}) == 1
    assert sample("orderstream_produce_errors_total", {"topic": "os.payments"}) == 1


def test_http_duration_by_route() -> None:
    duration = ("orderstream_http_request_duration_seconds_count", {"route": "/orders/{order_id}", "method": "GET"})
    requests = ("orderstream_http_requests_total", {"route": "/orders/{order_id}", "status": "200"})
    before = sample(*duration) or 0, sample(*requests) or 0  # other tests in this process serve the route too

    metrics.observe_http("/orders/{order_id}", "GET", 200, 0.01)

    assert sample(*duration) == before[0] + 1
    assert sample(*requests) == before[1] + 1


def test_process_collectors_and_no_created_series() -> None:
    text = metrics.render().decode()

    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    assert "python_info" in text
    assert "_created" not in text


def test_promtool_check_metrics_passes() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    metrics.event_handled("mtool", "order.placed", 0.01)
    metrics.observe_order_latency("confirmed", 1.2)
    metrics.set_lag("os.orders", 0, 3)
    metrics.observe_http("/orders", "POST", 202, 0.02)

    result = subprocess.run(
        [promtool, "check", "metrics"], input=metrics.render(), capture_output=True, timeout=60, check=False
    )

    assert result.returncode == 0, (result.stdout + result.stderr).decode()
