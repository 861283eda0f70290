"""Cost does not grow with time: analytics records stay bounded, an order's history stops when it is final.

The stages' own handlers run over a real partition database (rocksdict on disk); a
month of confirmed orders is simulated at one per minute on one partition.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from app.engine.step import Step
from app.engine.store import PartitionDB
from schemas.envelope import make


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
