"""What an order's confirmation causes is one record: the notification sent and the analytics count mark.

Both stages handle ``order.confirmed`` in the same step of its partition, so the record
they share (``notification/<order>``) reaches the changelog once per confirmed order.
The real adapters run over a real partition database; a replayed confirmation sends
nothing and counts nothing, and an order counted by an older version (its mark in
``recorded/<order>``) is not counted again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.engine.step import Step
from app.engine.store import PartitionDB
from schemas.envelope import make
from tests.unit.test_bounded_state import _confirmed

pytestmark = pytest.mark.usefixtures("one_partition")  # the stages check that a message is on its key's partition


def _handle_both(step: Step, env: dict[str, Any]) -> list[dict[str, Any]]:
    """The orders topic's routes for ``order.confirmed``, in the engine's order, each in its own scope."""
    from agents import analytics, notifications

    step.begin("notifications", "orders", 0, env)
    asyncio.run(notifications.handle(step, env))  # type: ignore[arg-type]
    step.begin("analytics", "orders", 0, env)
    analytics.handle(step, env)  # type: ignore[arg-type]
    out = [orjson.loads(o.value) for o in step.outputs]
    step.outputs.clear()
    return out


def _commit(step: Step) -> dict[str, dict[str, Any]]:
    writes, _ = step.freeze()
    step.db.apply(writes, {})
    step.landed()
    return {store: {key: value for key, (value, _) in records.items()} for store, records in writes.items()}


def _confirmation(order_id: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    return _confirmed(order_id, datetime(2026, 12, 2, 8, 0, tzinfo=UTC), "p1")


def test_a_confirmation_writes_one_record_per_order(tmp_path: Path) -> None:
    from tables import ANALYTICS, NOTIFICATIONS, analytics_partial, order_history

    db = PartitionDB(tmp_path / "p0", 0)
    step = Step(0, db)
    env = _confirmation("o-one")
    sent = _handle_both(step, env)
    assert [e["type"] for e in sent] == ["notification.sent", "analytics.order_recorded"]
    writes = _commit(step)
    per_order = [(store, key) for store, keys in writes.items() for key in keys if "o-one" in key]
    assert per_order == [(NOTIFICATIONS, "notification/o-one")]
    assert not [key for key, _ in db.scan(ANALYTICS, "recorded/")]
    # Both events are in the order's history, after their cause.
    assert [e["id"] for e in order_history(db, "o-one")] == [e["id"] for e in sent]

    # A replay (the confirmation delivered again under at-least-once): nothing sent, nothing counted.
    assert _handle_both(step, env) == []
    _commit(step)
    assert analytics_partial(db)["orders"] == 1
    db.close()


def test_an_undelivered_notification_leaves_the_count_and_a_redrive_sends_it_once(tmp_path: Path) -> None:
    from agents import analytics, notifications
    from tables import analytics_partial, order_history

    db = PartitionDB(tmp_path / "p0", 0)
    step = Step(0, db)
    env = _confirmation("o-fail")
    # The notification stage fails (dead-lettered: the engine rolls its scope back); analytics still counts.
    step.begin("notifications", "orders", 0, env)
    step.rollback()
    step.begin("analytics", "orders", 0, env)
    analytics.handle(step, env)  # type: ignore[arg-type]
    step.outputs.clear()
    _commit(step)
    assert analytics_partial(db)["orders"] == 1
    # The redrive delivers the notification; the count mark stays, the order is not counted again.
    step.begin("notifications", "orders", 1, env)
    asyncio.run(notifications.handle(step, env))  # type: ignore[arg-type]
    assert [orjson.loads(o.value)["type"] for o in step.outputs] == ["notification.sent"]
    step.outputs.clear()
    _commit(step)
    assert _handle_both(step, env) == []
    _commit(step)
    assert analytics_partial(db)["orders"] == 1
    assert sorted(e["type"] for e in order_history(db, "o-fail")) == ["analytics.order_recorded", "notification.sent"]
    db.close()


def test_an_order_counted_by_an_older_version_is_not_counted_again(tmp_path: Path) -> None:
    from tables import ANALYTICS, analytics_partial, order_history, pack_event

    db = PartitionDB(tmp_path / "p0", 0)
    step = Step(0, db)
    env = _confirmation("o-old")
    recorded = dict(make("analytics.order_recorded", "order", "o-old", {"order_id": "o-old"}, correlation_id="o-old"))
    step.begin("analytics", "orders", 0, env)
    step.put(ANALYTICS, "recorded/o-old", {"event": pack_event(recorded, "o-old")})
    _commit(step)
    sent = _handle_both(step, env)
    assert [e["type"] for e in sent] == ["notification.sent"]  # the notification was never sent; the count was
    _commit(step)
    assert analytics_partial(db)["orders"] == 0
    assert sorted(e["id"] for e in order_history(db, "o-old")) == sorted([recorded["id"], sent[0]["id"]])
    db.close()


def test_a_confirmation_on_another_partition_than_its_order_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe 23: analytics and notifications took an ``order.confirmed`` on any partition (the
    saga, inventory and payments refuse one), counting and notifying an order that is not there."""
    from agents import analytics, notifications
    from agents._wiring import WrongPartition
    from app.main import engine

    monkeypatch.setattr(engine, "partitions", 8)
    monkeypatch.setattr(engine, "_partitions_by_key", {})
    order_id = next(f"o{i}" for i in range(100) if engine.partition_for(f"o{i}") != 0)
    step = Step(0, PartitionDB(tmp_path / "p0", 0))
    env = _confirmed(order_id, datetime(2026, 11, 1, tzinfo=UTC), "p1")
    for handle in (analytics.handle, notifications.handle):
        step.begin("s", "orders", 1, env)
        with pytest.raises(WrongPartition):
            result = handle(step, env)  # type: ignore[arg-type]
            if asyncio.iscoroutine(result):
                asyncio.run(result)
    assert not step.outputs and not step.overlay
