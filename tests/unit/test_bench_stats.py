"""The benchmark's pure parts: percentiles, /proc parsing, topic kinds, windows, ratios, report shape."""

from __future__ import annotations

import pytest

from app.bench import kafka as bench_kafka
from app.bench import stats
from app.bench.cli import confirmed_per_window, cpu_figures, parse_args, summary_text
from schemas.registry import upcast

STAT = (
    "4242 (faust worker (x)) S 1 4242 4242 0 -1 4194560 12345 0 0 0 "
    "731 269 0 0 20 0 9 0 123456 1234567890 30000 18446744073709551615 0 0 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0"
)


def test_cpu_ticks_reads_utime_plus_stime_even_with_parentheses_in_the_name() -> None:
    assert stats.cpu_ticks(STAT) == 731 + 269


def test_vm_rss_reads_kilobytes() -> None:
    text = "Name:\tpython\nVmPeak:\t  999 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n"
    assert stats.vm_rss_bytes(text) == 123456 * 1024
    assert stats.vm_rss_bytes("Name:\tkthreadd\n") is None


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 50.5), (99, 99.01), (100, 100.0)])
def test_percentile_interpolates(q: float, expected: float) -> None:
    assert stats.percentile([float(v) for v in range(100, 0, -1)], q) == pytest.approx(expected)


def test_latency_ms_in_milliseconds_and_empty() -> None:
    lat = stats.latency_ms([0.010, 0.020, 0.030, 1.0])
    assert lat["max"] == 1000.0
    assert lat["p50"] == 25.0
    assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert stats.latency_ms([]) == {"p50": None, "p95": None, "p99": None, "max": None}


def test_topic_kind_separates_events_changelogs_and_foreign_topics() -> None:
    assert stats.topic_kind("bn1alo1w.orders", "bn1alo1w") == "events"
    assert stats.topic_kind("bn1alo1w.orders.dlq", "bn1alo1w") == "events"
    assert stats.topic_kind("bn1alo1w-order_records-changelog", "bn1alo1w") == "changelog"
    assert stats.topic_kind("bn1alo1w-__assignor-__leader", "bn1alo1w") == "other"
    assert stats.topic_kind("bn1alo1wx.orders", "bn1alo1w") is None
    assert stats.topic_kind("__consumer_offsets", "bn1alo1w") is None


def test_window_index_uses_the_edge_offsets() -> None:
    edges = [10, 20, 35]
    assert stats.window_index(9, edges) is None
    assert stats.window_index(10, edges) == 0
    assert stats.window_index(19, edges) == 0
    assert stats.window_index(20, edges) == 1
    assert stats.window_index(34, edges) == 1
    assert stats.window_index(35, edges) is None
    assert stats.window_index(20, [20, 20, 25]) == 1  # an empty first window


def test_produced_summary_splits_kinds_and_divides_by_confirmed() -> None:
    per_topic = {
        "a.orders": {"kind": "events", "records": 20, "bytes": 2000, "markers": 4},
        "a.inventory": {"kind": "events", "records": 6, "bytes": 600},
        "a-stock-changelog": {"kind": "changelog", "records": 30, "bytes": 9000, "aborted": 2},
    }
    s = stats.produced_summary(per_topic, confirmed=2)
    assert s["by_kind"]["events"] == {"records": 26, "bytes": 2600, "markers": 4, "aborted": 0}
    per = s["per_confirmed_order"]
    assert per["events_records"] == 13.0
    assert per["changelog_bytes"] == 4500.0
    assert per["total_records"] == 28.0
    assert per["markers"] == 2.0
    assert stats.produced_summary(per_topic, confirmed=0)["per_confirmed_order"]["total_records"] is None


def test_ratio_and_its_formatting() -> None:
    assert stats.ratio(1234, 4000) == 0.308
    assert stats.format_ratio(1234, 4000) == "0.31 × ceiling"
    assert stats.format_ratio(12.0, 0.5) == "24.00 × ceiling"
    assert stats.format_ratio(5000.0, 1.0) == "5,000 × ceiling"
    assert stats.format_ratio(None, 4000) == "- × ceiling"
    assert stats.format_ratio(1.0, 0) == "- × ceiling"


def test_parse_rates_and_windows() -> None:
    assert stats.parse_rates("500, 1000,max") == [500.0, 1000.0, None]
    with pytest.raises(ValueError):
        stats.parse_rates("0")
    with pytest.raises(ValueError):
        stats.parse_rates("")
    assert stats.parse_windows("1000,10000,100000") == [1000, 10000, 100000]
    with pytest.raises(ValueError):
        stats.parse_windows("1000,100")


def test_config_names() -> None:
    assert stats.config_name("orderstream", "at_least_once", 2) == "orderstream ALO 2w"
    assert stats.config_name("orderstream", "exactly_once", 1) == "orderstream EOS 1w"
    assert stats.config_name("ceiling", "at_least_once", 2) == "ceiling ALO 2p"


def test_cpu_figures_per_order_and_cores() -> None:
    cpu = cpu_figures([10.0, 20.0], [11.0, 21.5], 100.0, 100.5, 2.0, 500, "orderstream")
    assert cpu["worker_seconds"] == 2.5
    assert cpu["worker_ms_per_order"] == 5.0
    assert cpu["broker_ms_per_order"] == 1.0
    assert cpu["worker_cores"] == 1.25
    gone = cpu_figures([None], [None], None, None, 1.0, 0, "ceiling")
    assert gone["worker_ms_per_order"] is None and gone["broker_seconds"] is None


def test_tally_counts_outcomes_duplicates_and_early_ones() -> None:
    t = bench_kafka.Tally(keep_early=True)
    t.expect("o1", 1.0)
    t.record("o1", "order.confirmed", 1.5)
    t.record("o1", "order.confirmed", 1.6)
    t.record("o2", "order.rejected", 2.0)  # before its POST answered
    assert "o2" not in t.done_at
    t.expect("o2", 1.9)
    assert t.outcomes() == {"confirmed": 1, "rejected": 1}
    assert t.duplicates == 1
    assert sorted(t.latencies()) == pytest.approx([0.1, 0.5])
    t.reset()
    assert not t.sent_at and not t.done_at and t.duplicates == 0


def test_confirmed_per_window_follows_send_order() -> None:
    t = bench_kafka.Tally()
    for i in range(5):
        t.expect(f"o{i}", float(i))
    for i in (0, 1, 3):
        t.record(f"o{i}", "order.confirmed", 10.0)
    t.record("o4", "order.cancelled", 10.0)
    assert confirmed_per_window(t, [2, 5], "p") == [2, 1]


def test_placed_orders_make_the_edge_envelope() -> None:
    orders = bench_kafka.placed_orders("px", 0, 3, products=10, lines=2)
    env = upcast(__import__("orjson").loads(bench_kafka.placed_value(orders[0])))
    assert env["type"] == "order.placed"
    assert env["correlation_id"] == env["entity_id"] == orders[0].order_id
    payload = env["payload"]
    assert len(payload["items"]) == 2
    assert payload["total_cents"] == sum(i["price_cents"] * i["quantity"] for i in payload["items"])
    assert payload["payment"]["token"].startswith("tok_ok_") and payload["payment"]["last4"] == "4242"
    assert len({o.order_id for o in orders}) == 3


def _run(name: str, engine: str, **over: object) -> dict[str, object]:
    run: dict[str, object] = {
        "name": name,
        "engine": engine,
        "guarantee": "at_least_once",
        "workers": 2,
        "offered_rate": None,
        "orders": 10,
        "sent": 10,
        "completed": 9,
        "missing": 1,
        "outcomes": {"confirmed": 9},
        "duplicates": 0,
        "completed_per_s": 100.0,
        "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": 30.0, "max": 40.0},
        "cpu": {"worker_ms_per_order": 1.0, "broker_ms_per_order": 0.5},
        "rss_mb": {"orderstream0": 100.0},
        "produced": {"per_confirmed_order": {"total_records": 26.0, "total_bytes": 5000.0}},
    }
    run.update(over)
    return run


def test_check_run_and_the_printed_ratios() -> None:
    ceiling = _run("ceiling ALO 2p", "ceiling", completed=10, missing=0, outcomes={"confirmed": 10})
    ceiling["completed_per_s"] = 400.0
    ceiling["produced"] = {"per_confirmed_order": {"total_records": 13.0, "total_bytes": 2500.0}}
    run = _run("orderstream ALO 2w", "orderstream")
    assert stats.check_run(run) == []
    assert stats.check_run({**run, "missing": 0}) == ["completed + missing != sent"]
    assert "missing key produced" in stats.check_run({k: v for k, v in run.items() if k != "produced"})
    assert stats.vs_ceiling(run, ceiling)["completed_per_s"] == 0.25
    assert stats.vs_ceiling(run, ceiling)["records_per_order"] == 2.0
    text = summary_text({"machine": {"cpus": 2}, "broker": {"bootstrap": "b:1"}, "runs": [ceiling, run]})
    assert "orderstream ALO 2w @ max: 100 orders/s = 0.25 × ceiling" in text
    assert "= 2.00 × ceiling" in text


def test_ceiling_for_prefers_the_same_rate() -> None:
    runs = [_run("c", "ceiling", offered_rate=None), _run("c", "ceiling", offered_rate=500.0)]
    assert stats.ceiling_for(runs, 500.0) is runs[1]
    assert stats.ceiling_for(runs, 800.0) is runs[0]
    assert stats.ceiling_for([], 1.0) is None


def test_parse_args_defaults_and_windows() -> None:
    args = parse_args([])
    assert args.guarantees == ["at_least_once", "exactly_once"]
    assert args.workers == [1, 2]
    assert args.rates == [None]
    assert args.ceiling_orders == max(args.orders, 20_000)
    assert parse_args(["--orders", "150", "--ceiling-orders", "150"]).ceiling_orders == 150
    w = parse_args(["--windows", "100,1000", "--rates", "50,max", "--no-ceiling"])
    assert (w.orders, w.windows, w.rates, w.ceiling_processes) == (1000, [100, 1000], [50.0, None], 0)
    with pytest.raises(SystemExit):
        parse_args(["--guarantees", "maybe_once"])
