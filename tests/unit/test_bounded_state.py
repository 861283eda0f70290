"""Cost does not grow with time: analytics records stay bounded, an order's history stops when it is final.

The stages' own handlers run over a real partition database (rocksdict on disk); a
month of confirmed orders is simulated at one per minute on one partition.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from app.engine.step import Step
from app.engine.store import PartitionDB
from schemas.envelope import make

pytestmark = pytest.mark.usefixtures("one_partition")  # the stages check that a message is on its key's partition


def _confirmed(order_id: str, at: datetime, product: str) -> dict[str, object]:
    ts = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    payload = {
        "order_id": order_id,
        "user_id": "u1",
        "total": "12.50",
        "total_cents": 1250,
        "currency": "USD",
        "items": [{"product_id": product, "quantity": 1, "price_cents": 1250}],
        "confirmed_at": ts,
    }
    return dict(make("order.confirmed", "order", order_id, payload, correlation_id=order_id, timestamp=ts))


def test_analytics_records_are_bounded_after_thirty_days(tmp_path: Path) -> None:
    from agents import analytics
    from app.domain.analytics import KEEP_MINUTES
    from tables import ANALYTICS, analytics_partial

    db = PartitionDB(tmp_path / "p0", 0)
    step = Step(0, db)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    minutes = 30 * 24 * 60
    sizes = []
    for i in range(minutes):
        step.begin("analytics", "orders", i, {})
        analytics.handle(step, _confirmed(f"o{i}", start + timedelta(minutes=i), f"p{i % 40}"))  # type: ignore[arg-type]
        if i % 10 == 0 or i == minutes - 1:  # a commit every ten orders (every 100 ms live)
            writes, _ = step.freeze()
            db.apply(writes, {})
            step.landed()
            step.outputs.clear()
            if i % 1000 == 0:
                sizes.append(max(len(orjson.dumps(v)) for _, v in db.scan(ANALYTICS, "")))
    partial = analytics_partial(db)
    assert partial["orders"] == minutes
    assert len(partial["windows"]) <= KEEP_MINUTES + 11  # pruned as new windows open; one commit's worth may lag
    assert len(partial["products"]) == 40
    assert max(sizes) < 200, sizes  # no aggregate record grows with time
    db.close()


def _handle_all(db: PartitionDB, confirmations: list[tuple[str, datetime]], commit_every: int = 1) -> None:
    from agents import analytics

    step = Step(0, db)
    for i, (order_id, at) in enumerate(confirmations):
        step.begin("analytics", "orders", i, {})
        analytics.handle(step, _confirmed(order_id, at, "p1"))  # type: ignore[arg-type]
        if (i + 1) % commit_every == 0 or i == len(confirmations) - 1:
            writes, _ = step.freeze()
            db.apply(writes, {})
            step.landed()
            step.outputs.clear()


def _windows(db: PartitionDB) -> list[str]:
    from tables import ANALYTICS

    return [key[len("window/") :] for key, _ in db.scan(ANALYTICS, "window/")]


def test_a_window_opened_behind_the_pruning_horizon_is_pruned_later(tmp_path: Path) -> None:
    from app.domain.analytics import KEEP_MINUTES
    from tables import analytics_partial

    db = PartitionDB(tmp_path / "p0", 0)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    late = t0 + timedelta(minutes=10)
    now = t0 + timedelta(minutes=KEEP_MINUTES + 60)
    # Windows at t0 .. t0+3 min, then an hour past the kept span: the first ones are pruned.
    _handle_all(db, [(f"o{i}", t0 + timedelta(minutes=i)) for i in range(4)] + [("o-now", now)])
    assert _windows(db) == ["2026-11-01T03:00:00Z"]
    # A late confirmation opens a window behind the horizon; the summary still shows it ...
    _handle_all(db, [("o-late", late)])
    assert "2026-11-01T00:10:00Z" in analytics_partial(db)["windows"]
    # ... and the next pruning deletes it: nothing is left behind the horizon for ever.
    _handle_all(db, [("o-next", now + timedelta(minutes=1))])
    assert _windows(db) == ["2026-11-01T03:00:00Z", "2026-11-01T03:01:00Z"]
    assert analytics_partial(db)["windows"].keys() == set(_windows(db))
    db.close()


def test_windows_opened_and_passed_in_one_commit_are_pruned(tmp_path: Path) -> None:
    from app.domain.analytics import KEEP_MINUTES

    db = PartitionDB(tmp_path / "p0", 0)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    far = t0 + timedelta(minutes=KEEP_MINUTES + 5)
    # One commit: three windows, then one past the kept span (they are not in RocksDB yet).
    _handle_all(db, [("o1", t0), ("o2", t0 + timedelta(minutes=1)), ("o3", far)], commit_every=100)
    assert _windows(db) == ["2026-11-01T02:05:00Z"]
    db.close()
