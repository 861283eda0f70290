"""Analytics partials: record, merge across partitions, one-minute tumbling windows, summary."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain import analytics


def confirmed(order_id: str, at: str, *lines: tuple[str, int, int]) -> dict[str, Any]:
    """Build the part of an ``order.confirmed`` payload analytics reads, from (product, quantity, price_cents) lines."""
    items = [{"product_id": pid, "quantity": qty, "price_cents": cents} for pid, qty, cents in lines]
    return {
        "order_id": order_id,
        "total_cents": sum(qty * cents for _, qty, cents in lines),
        "currency": "USD",
        "items": items,
        "confirmed_at": at,
    }


A = confirmed("o1", "2024-05-01T12:00:05.000Z", ("p1", 2, 1250), ("p2", 1, 499))  # 29.99
B = confirmed("o2", "2024-05-01T12:00:59.999Z", ("p1", 1, 1250))  # 12.50, same minute as A
C = confirmed("o3", "2024-05-01T12:01:00.000Z", ("p3", 4, 100))  # 4.00, next minute


def record_all(*payloads: dict[str, Any]) -> analytics.Partial:
    partial = analytics.empty_partial()
    for p in payloads:
        partial = analytics.record(partial, p)
    return partial


@pytest.mark.parametrize(
    ("timestamp", "start"),
    [
        ("2024-05-01T12:34:56.789Z", "2024-05-01T12:34:00Z"),
        ("2024-05-01T12:34:00.000Z", "2024-05-01T12:34:00Z"),
        ("2024-05-01T12:34:59.999Z", "2024-05-01T12:34:00Z"),
        ("2024-05-01T14:34:56+02:00", "2024-05-01T12:34:00Z"),
        ("2024-05-01T12:34:56", "2024-05-01T12:34:00Z"),
    ],
)
def test_window_start_is_the_utc_minute(timestamp: str, start: str) -> None:
    assert analytics.window_start(timestamp) == start


def test_record_adds_one_order_to_totals_window_and_products() -> None:
    partial = analytics.record(analytics.empty_partial(), A)

    assert partial == {
        "orders": 1,
        "revenue_cents": 2999,
        "currency": "USD",
        "windows": {"2024-05-01T12:00:00Z": {"orders": 1, "revenue_cents": 2999}},
        "products": {"p1": {"units": 2, "revenue_cents": 2500}, "p2": {"units": 1, "revenue_cents": 499}},
    }


def test_record_leaves_the_given_partial_alone() -> None:
    before = analytics.record(analytics.empty_partial(), A)
    snapshot = {**before, "windows": dict(before["windows"]), "products": dict(before["products"])}

    analytics.record(before, C)

    assert before == snapshot


def test_orders_in_the_same_minute_share_a_window() -> None:
    partial = record_all(A, B)

    assert partial["windows"] == {"2024-05-01T12:00:00Z": {"orders": 2, "revenue_cents": 4249}}


def test_an_order_in_the_next_minute_opens_a_new_window() -> None:
    partial = record_all(A, C)

    assert partial["windows"] == {
        "2024-05-01T12:00:00Z": {"orders": 1, "revenue_cents": 2999},
        "2024-05-01T12:01:00Z": {"orders": 1, "revenue_cents": 400},
    }


def test_merging_partitions_equals_recording_everything_in_one() -> None:
    assert analytics.merge([record_all(A), record_all(B, C)]) == record_all(A, B, C)


def test_merging_nothing_is_empty() -> None:
    assert analytics.merge([]) == analytics.empty_partial()


def test_merge_keeps_the_first_known_currency() -> None:
    merged = analytics.merge([analytics.empty_partial(), record_all(A)])

    assert merged["currency"] == "USD"


def test_merge_counts_adds_statuses_and_drops_zeros() -> None:
    counts = analytics.merge_counts([{"pending": 1, "confirmed": 2}, {"pending": -1, "cancelled": 1}])

    assert counts == {"cancelled": 1, "confirmed": 2}


def test_summary_revenue_total_is_the_sum_of_the_orders() -> None:
    out = analytics.summary(record_all(A, B, C), {"confirmed": 3})

    assert out["orders_by_status"] == {"confirmed": 3}
    assert out["revenue"] == {"total": "46.49", "currency": "USD", "by_currency": {"USD": "46.49"}}
    assert out["orders_recorded"] == 3


def test_summary_lists_revenue_per_minute_in_time_order() -> None:
    out = analytics.summary(record_all(C, A, B), {})

    assert out["revenue_per_minute"] == [
        {"window_start": "2024-05-01T12:00:00Z", "orders": 2, "revenue": "42.49"},
        {"window_start": "2024-05-01T12:01:00Z", "orders": 1, "revenue": "4.00"},
    ]


def test_summary_keeps_only_the_latest_minutes() -> None:
    out = analytics.summary(record_all(A, C), {}, minutes=1)

    assert [w["window_start"] for w in out["revenue_per_minute"]] == ["2024-05-01T12:01:00Z"]


def test_summary_ranks_top_products_by_revenue_then_id() -> None:
    tie = confirmed("o4", "2024-05-01T12:02:00.000Z", ("p0", 1, 400))
    out = analytics.summary(record_all(A, B, C, tie), {}, top=3)

    assert out["top_products"] == [
        {"product_id": "p1", "units": 3, "revenue": "37.50"},
        {"product_id": "p2", "units": 1, "revenue": "4.99"},
        {"product_id": "p0", "units": 1, "revenue": "4.00"},
    ]


def test_summary_of_nothing_is_zero_dollars() -> None:
    out = analytics.summary(analytics.empty_partial(), {})

    assert out["revenue"] == {"total": "0.00", "currency": "USD", "by_currency": {}}
    assert out["revenue_per_minute"] == []
    assert out["top_products"] == []


def test_status_delta_counts_a_new_order() -> None:
    assert analytics.status_delta({}, None, "pending") == {"pending": 1}


def test_status_delta_moves_an_order_between_statuses() -> None:
    counts = {"pending": 2, "reserved": 1}

    assert analytics.status_delta(counts, "pending", "reserved") == {"pending": 1, "reserved": 2}
    assert counts == {"pending": 2, "reserved": 1}


def test_status_delta_to_the_same_status_changes_nothing() -> None:
    assert analytics.status_delta({"confirmed": 1}, "confirmed", "confirmed") == {"confirmed": 1}


# --- the per-key helpers the analytics stage keeps one record each with ----------------------


def test_totals_add_orders_and_keep_other_currencies_apart() -> None:
    total = analytics.empty_total()
    for payload in (A, B, {**C, "currency": "EUR"}):
        total = analytics.add_total(total, payload)

    assert total == {"orders": 3, "revenue_cents": 4249, "currency": "USD", "others": {"EUR": 400}}
    assert analytics.empty_total() == {"orders": 0, "revenue_cents": 0, "currency": "USD"}


def test_window_adds_orders_and_revenue() -> None:
    window = analytics.add_window(analytics.add_window(analytics.empty_window(), A), B)

    assert window == {"orders": 2, "revenue_cents": 4249}


def test_add_line_adds_units_and_revenue_per_product() -> None:
    first = analytics.add_line(None, {"product_id": "p1", "quantity": 2, "price_cents": 1250})
    second = analytics.add_line(first, {"product_id": "p1", "quantity": 1, "price_cents": 1000})

    assert first == {"units": 2, "revenue_cents": 2500}
    assert second == {"units": 3, "revenue_cents": 3500}


def test_the_per_key_helpers_add_up_to_record() -> None:
    total, windows, products = analytics.empty_total(), {}, {}
    for payload in (A, B, C):
        total = analytics.add_total(total, payload)
        w = analytics.window_start(payload["confirmed_at"])
        windows[w] = analytics.add_window(windows.get(w) or analytics.empty_window(), payload)
        for item in payload["items"]:
            products[item["product_id"]] = analytics.add_line(products.get(item["product_id"]), item)

    assert {**total, "windows": windows, "products": products} == record_all(A, B, C)


@pytest.mark.parametrize(
    ("timestamp", "oldest"),
    [
        ("2024-05-01T12:00:30.000Z", "2024-05-01T10:00:00Z"),
        ("2024-05-01T12:00:00.000Z", "2024-05-01T10:00:00Z"),
        ("2024-05-01T12:59:59.999Z", "2024-05-01T10:59:00Z"),
        ("2024-05-01T01:30:00.000Z", "2024-04-30T23:30:00Z"),
        ("2024-05-01T14:00:30+02:00", "2024-05-01T10:00:00Z"),
    ],
)
def test_oldest_kept_is_keep_minutes_before_the_orders_window(timestamp: str, oldest: str) -> None:
    assert analytics.KEEP_MINUTES == 120
    assert analytics.oldest_kept(timestamp) == oldest


def _prune(windows: dict[str, dict[str, int]], at: str) -> dict[str, dict[str, int]]:
    """Drop the windows older than the oldest kept, as the analytics stage does when ``at`` opens a window."""
    cutoff = analytics.oldest_kept(at)
    return {w: v for w, v in windows.items() if w >= cutoff}


def test_pruning_keeps_the_window_at_the_boundary_and_drops_the_one_before() -> None:
    windows = {
        "2024-05-01T09:59:00Z": {"orders": 1, "revenue_cents": 100},
        "2024-05-01T10:00:00Z": {"orders": 1, "revenue_cents": 200},
        "2024-05-01T11:00:00Z": {"orders": 1, "revenue_cents": 300},
    }

    kept = _prune(windows, "2024-05-01T12:00:59.999Z")

    assert sorted(kept) == ["2024-05-01T10:00:00Z", "2024-05-01T11:00:00Z"]
    # KEEP_MINUTES + 1 windows fit: the order's own and the KEEP_MINUTES before it.
    assert analytics.window_start("2024-05-01T12:00:59.999Z") == "2024-05-01T12:00:00Z"


def test_window_keys_sort_like_time_so_a_prefix_scan_can_stop_at_the_cutoff() -> None:
    stamps = ["2024-04-30T23:59:59Z", "2024-05-01T00:00:00Z", "2024-05-01T09:05:00Z", "2024-05-01T10:00:00Z"]
    keys = [analytics.window_start(t) for t in stamps]

    assert keys == sorted(keys)
    assert analytics.oldest_kept("2024-05-01T02:00:00Z") == "2024-05-01T00:00:00Z"
    assert [k for k in keys if k < analytics.oldest_kept("2024-05-01T02:00:00Z")] == ["2024-04-30T23:59:00Z"]


def test_orders_in_another_currency_are_never_added_to_the_revenue() -> None:
    usd = {**A, "currency": "USD"}
    eur = {**A, "order_id": "o-eur", "currency": "EUR"}
    partial = analytics.record(analytics.record(analytics.empty_partial(), usd), eur)
    other = analytics.record(analytics.empty_partial(), {**eur, "order_id": "o-eur2"})
    out = analytics.summary(analytics.merge([partial, other]), {"confirmed": 3})
    cents = int(A["total_cents"])
    assert out["revenue"]["total"] == analytics.from_cents(cents) and out["revenue"]["currency"] == "USD"
    assert out["revenue"]["by_currency"] == {"EUR": analytics.from_cents(2 * cents), "USD": analytics.from_cents(cents)}
    assert out["orders_recorded"] == 3
    assert sum(p["units"] for p in out["top_products"]) == 3 * sum(int(i["quantity"]) for i in A["items"])
    assert out["revenue_per_minute"][0]["revenue"] == analytics.from_cents(cents)


NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"items": [{"product_id": "boom", "quantity": 2**63, "price_cents": 0}], "total_cents": 0}, "bounds"),
        ({"items": [{"product_id": "p", "quantity": -5, "price_cents": 100}], "total_cents": 0}, "bounds"),
        ({"items": [{"product_id": "p", "quantity": 1, "price_cents": 10**12}]}, "bounds"),
        ({"total_cents": 2**63}, "total"),
        ({"total_cents": -100}, "total"),
        ({"currency": "<script>"}, "currency"),
        ({"confirmed_at": "9999-12-31T23:59:00Z"}, "ahead"),
        ({"confirmed_at": "0001-01-01T00:00:00+01:00"}, "before 2000"),  # no UTC date: probe 25 (stalled)
        ({"confirmed_at": "0001-01-01T00:30:00Z"}, "before 2000"),  # its oldest kept window is no date
        ({"confirmed_at": "1999-12-31T23:59:59Z"}, "before 2000"),
    ],
)
def test_a_confirmation_no_saga_could_send_is_refused(change: dict[str, Any], why: str) -> None:
    """Probe 23: a hand-written confirmation of 2**63 units made the merged summary overflow
    (500 on every worker) and one stamped in year 9999 pruned every window. Probe 25: one in
    year 1 at +01:00 failed its handler after it had written (see the engine's empty-batch test)."""
    analytics.admit(A, NOW)  # a real one passes
    with pytest.raises(ValueError, match=why):
        analytics.admit({**A, **change}, NOW)


def test_a_confirmation_a_little_ahead_of_this_clock_is_counted() -> None:
    analytics.admit({**A, "confirmed_at": "2024-05-01T13:00:00.000Z"}, NOW)  # another machine's clock, an hour on
