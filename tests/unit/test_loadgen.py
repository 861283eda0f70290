"""The load generator's pure parts: pacing, percentiles, card mix, order bodies, the report."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date

import pytest

from app import loadgen
from app.domain.cards import luhn_valid
from app.web import validation


def test_schedule_spaces_starts_evenly_from_zero() -> None:
    assert loadgen.schedule(5, 2.0) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert loadgen.schedule(0, 10.0) == []
    with pytest.raises(ValueError):
        loadgen.schedule(3, 0)


def test_schedule_does_not_drift_over_many_orders() -> None:
    starts = loadgen.schedule(10_000, 100.0)
    assert starts[-1] == pytest.approx(99.99)


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (50, 50.5), (95, 95.05), (99, 99.01), (100, 100.0)],
)
def test_percentile_interpolates_between_closest_ranks(q: float, expected: float) -> None:
    values = list(range(100, 0, -1))  # unsorted on purpose
    assert loadgen.percentile([float(v) for v in values], q) == pytest.approx(expected)


def test_percentile_of_one_value_and_of_none() -> None:
    assert loadgen.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        loadgen.percentile([], 50)


def test_ok_mix_always_charges() -> None:
    rng = random.Random(1)
    assert {loadgen.choose_card(rng, "ok") for _ in range(100)} == {loadgen.OK_CARD}


def test_cards_mix_is_seeded_and_roughly_weighted() -> None:
    picks = [loadgen.choose_card(random.Random(42), "cards") for _ in range(2)]
    assert picks[0] == picks[1]
    rng = random.Random(42)
    seen = Counter(loadgen.choose_card(rng, "cards") for _ in range(10_000))
    assert set(seen) == {loadgen.OK_CARD, loadgen.DECLINED_CARD, loadgen.INSUFFICIENT_FUNDS_CARD, loadgen.FLAKY_CARD}
    assert 0.77 < seen[loadgen.OK_CARD] / 10_000 < 0.83
    assert 0.08 < seen[loadgen.FLAKY_CARD] / 10_000 < 0.12
    assert "4000000000000341" not in seen  # the hanging card never


def test_every_mix_card_is_luhn_valid() -> None:
    assert all(luhn_valid(card) for mix in loadgen.CARD_MIXES.values() for card, _ in mix)


def test_order_body_passes_the_api_validation() -> None:
    today = date(2025, 6, 1)
    rng = random.Random(3)
    for i in range(50):
        body = loadgen.order_body(rng, i, "lgabc", 20, 4, loadgen.OK_CARD, today)
        order = validation.order_request(body)
        assert 1 <= len(order.items) <= 4
        assert len({item["product_id"] for item in order.items}) == len(order.items)
        assert all(item["product_id"].startswith("lgabc-p") for item in order.items)


def test_order_body_never_asks_for_more_lines_than_products() -> None:
    body = loadgen.order_body(random.Random(0), 0, "x", 2, 10, loadgen.OK_CARD, date(2025, 1, 1))
    assert len(body["items"]) <= 2


def test_server_seconds_reads_the_order_timestamps() -> None:
    view = {"created_at": "2025-01-01T00:00:00.000Z", "updated_at": "2025-01-01T00:00:01.250Z"}
    assert loadgen.server_seconds(view) == pytest.approx(1.25)
    assert loadgen.server_seconds({"created_at": "nope"}) is None


def test_summarize_counts_rates_and_latency() -> None:
    outcomes = [
        loadgen.Outcome(0, post_start=0.0, accepted_at=0.1, final_at=0.5, status="confirmed", server_latency=0.3),
        loadgen.Outcome(1, post_start=1.0, accepted_at=1.1, final_at=2.0, status="cancelled", reason="card_declined"),
        loadgen.Outcome(2, post_start=1.5, accepted_at=2.0, status="reserved"),  # never finished
        loadgen.Outcome(3, post_start=1.8),  # never accepted
    ]
    report = loadgen.summarize(outcomes, {"POST /orders 503": 2})
    assert (report["placed"], report["not_placed"], report["completed"]) == (3, 1, 2)
    assert report["accepted_per_s"] == 1.5  # 3 accepted over 2.0 s
    assert report["completed_per_s"] == 1.0  # 2 completed over 2.0 s
    assert report["latency_ms"]["max"] == 1000.0
    assert report["latency_ms"]["p50"] == 750.0
    assert report["server_latency_ms"]["p50"] == 300.0
    assert report["outcomes"] == {"confirmed": 1, "cancelled": 1}
    assert report["reasons"] == {"cancelled: card_declined": 1}
    assert report["unfinished"] == {"reserved": 1}
    assert report["errors"] == {"POST /orders 503": 2}
    assert "2 completed" in loadgen.format_report(report)


def test_summarize_with_nothing_done() -> None:
    report = loadgen.summarize([loadgen.Outcome(0)], {})
    assert report["completed"] == 0
    assert report["completed_per_s"] is None
    assert report["latency_ms"] == {"p50": None, "p95": None, "p99": None, "max": None}
    loadgen.format_report(report)


def test_parse_args_defaults() -> None:
    args = loadgen.parse_args([])
    assert args.url == [loadgen.DEFAULT_URL]
    assert (args.orders, args.rate, args.products, args.stock, args.mix) == (1000, 100.0, 20, 1000, "ok")
    assert loadgen.PREFIX.match(args.prefix)
    assert loadgen.parse_args([]).prefix != args.prefix
    two = loadgen.parse_args(["--url", "http://a:1", "--url", "http://b:2", "--prefix", "run1"])
    assert two.url == ["http://a:1", "http://b:2"]
    assert two.prefix == "run1"


def test_parse_args_open_loop() -> None:
    closed = loadgen.parse_args([])
    assert (closed.open_loop, closed.concurrency, closed.broker) == (False, 64, None)
    opened = loadgen.parse_args(["--open-loop"])
    assert opened.open_loop and opened.concurrency is None  # POSTs unbounded
    assert opened.poll_concurrency == 4096
    kafka = loadgen.parse_args(["--open-loop", "--broker", "kafka://h:1", "--app-id", "os1"])
    assert (kafka.broker, kafka.app_id) == ("kafka://h:1", "os1")
    with pytest.raises(SystemExit):
        loadgen.parse_args(["--broker", "kafka://h:1"])  # the topic prefix is needed
