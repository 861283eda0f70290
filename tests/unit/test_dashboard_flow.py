"""The dashboard's flow: samples of a Prometheus registry turned into rates and latency quantiles."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.web import dashboard


def _registry() -> tuple[CollectorRegistry, Counter, Counter, Histogram, Gauge]:
    registry = CollectorRegistry()
    placed = Counter("orderstream_orders_placed_total", "", registry=registry)
    outcomes = Counter("orderstream_order_outcomes_total", "", ["status"], registry=registry)
    latency = Histogram("orderstream_order_latency_seconds", "", ["outcome"], buckets=(0.1, 1.0), registry=registry)
    lag = Gauge("orderstream_consumer_lag", "", ["topic", "partition"], registry=registry)
    return registry, placed, outcomes, latency, lag


def test_a_family_not_exported_is_none_never_zero() -> None:
    registry = CollectorRegistry()
    Counter("orderstream_orders_placed_total", "", registry=registry).inc(3)
    s = dashboard.sample(registry, 10.0)
    assert s == {"t": 10.0, "at": 10.0, "placed": 3.0, "finished": None, "events": None, "buckets": None, "lag": None}
    data = dashboard.dashboard_data({"w": [s, {**s, "t": 12.0, "at": 12.0, "placed": 5.0}]}, {})
    assert data["flow"]["placed_per_s"] == [1.0]
    assert data["flow"]["latency_p50"] == [None]
    assert data["flow"]["families"] == {"placed": True, "finished": False, "latency": False, "lag": False}


def test_a_registered_counter_without_children_counts_zero() -> None:
    registry, *_ = _registry()
    s = dashboard.sample(registry, 0.0)
    assert (s["placed"], s["finished"], s["buckets"], s["lag"]) == (0.0, 0.0, [], None)


def test_a_late_read_divides_by_the_time_it_covers() -> None:
    empty = {"finished": None, "events": None, "buckets": None, "lag": None}
    samples = [{**empty, "t": 0.0, "at": 0.0, "placed": 0.0}, {**empty, "t": 2.0, "at": 2.5, "placed": 10.0}]
    assert dashboard.flow({"w": samples})["placed_per_s"] == [4.0]


def test_events_that_are_results_are_not_throughput() -> None:
    registry = CollectorRegistry()
    events = Counter("orderstream_events_processed_total", "", ["stage", "type"], registry=registry)
    events.labels("orders", "order.placed").inc(4)
    events.labels("orders", "replayed").inc(2)
    events.labels("orders", "dedupe_pruned").inc(100)
    assert dashboard.sample(registry, 0.0)["events"] == 4.0


def test_rates_sum_over_workers_and_survive_a_restart() -> None:
    a = [{"t": 0.0, "placed": 10.0}, {"t": 2.0, "placed": 14.0}, {"t": 4.0, "placed": 2.0}]  # restarted
    b = [{"t": 2.0, "placed": 0.0}, {"t": 4.0, "placed": 6.0}]
    empty = {"finished": None, "events": None, "buckets": None, "lag": None}
    flow = dashboard.flow({"a": [{**empty, **s} for s in a], "b": [{**empty, **s} for s in b]})
    assert flow["t"] == [2.0, 4.0]
    assert flow["placed_per_s"] == [2.0, 1.0 + 3.0]


def test_latency_quantiles_come_from_the_increase_over_the_window() -> None:
    registry, placed, outcomes, latency, lag = _registry()
    sampler = dashboard.Sampler(registry)
    for _ in range(90):  # before the window: slow orders that must not count
        latency.labels("confirmed").observe(5.0)
    sampler.take(0.0)
    for step in range(1, dashboard.QUANTILE_WINDOW + 1):
        for _ in range(10):
            latency.labels("confirmed").observe(0.05)
            placed.inc()
            outcomes.labels("confirmed").inc()
        lag.labels("t", "0").set(step)
        sampler.take(step * dashboard.INTERVAL)
    flow = dashboard.flow({"w": list(sampler.samples)})
    assert flow["latency_p50"][-1] == pytest.approx(0.05)  # half-way through the first bucket
    assert flow["latency_p99"][-1] == pytest.approx(0.099)
    assert flow["finished_per_s"][-1] == 10 / dashboard.INTERVAL
    assert flow["lag"][-1] == dashboard.QUANTILE_WINDOW
    assert all(flow["families"].values())


def test_quantile_interpolates_like_histogram_quantile() -> None:
    assert dashboard.quantile(0.5, {"0.1": 0, "1.0": 10, "+Inf": 10}) == pytest.approx(0.55)
    assert dashboard.quantile(0.99, {"0.1": 0, "1.0": 0, "+Inf": 4}) == 1.0  # beyond the last bound
    assert dashboard.quantile(0.5, {"0.1": 0, "+Inf": 0}) is None
    assert not math.isnan(dashboard.quantile(0.5, {"0.1": 3, "+Inf": 3}) or 0)


def test_the_sampler_keeps_one_sample_per_grid_point_and_a_bounded_history() -> None:
    sampler = dashboard.Sampler(_registry()[0])
    sampler.take(0.2)
    sampler.take(0.8)  # the same grid point: nearest multiple of INTERVAL (2 s)
    assert [s["t"] for s in sampler.samples] == [0.0]
    for i in range(dashboard.HISTORY + 5):
        sampler.take((i + 1) * dashboard.INTERVAL)
    assert len(sampler.samples) == dashboard.HISTORY
