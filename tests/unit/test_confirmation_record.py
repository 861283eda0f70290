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


class _Smtp:
    """A notifier that is not the log's: ``hang`` never answers, else it fails ``failures`` times first."""

    name = "smtp"

    def __init__(self, *, hang: bool = False, failures: int = 0) -> None:
        self.hang, self.failures, self.sent = hang, failures, []  # type: list[str]

    async def send(self, message_id: str, to: Any, subject: str, body: str, data: dict[str, Any]) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.failures:
            self.failures -= 1
            raise OSError("connection refused")
        self.sent.append(message_id)


def _engine_task(tmp_path: Path) -> tuple[Any, Any]:
    from app.engine.runtime import Task
    from app.main import engine

    return engine, Task(0, Step(0, PartitionDB(tmp_path / "p0", 0)), producer=None)  # type: ignore[arg-type]


def _record(engine: Any, env: dict[str, Any], offset: int = 7) -> Any:
    from app.bench.steps import PlainRecord

    return PlainRecord(f"{engine.app_id}.orders", 0, offset, env["entity_id"].encode(), orjson.dumps(env), [])


def test_a_hanging_mail_server_holds_no_step_the_delivery_runs_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe 25: with an SMTP server that accepted connections and never answered, each
    confirmation held its partition's step for 15 s: every order behind it waited."""
    import time

    from agents import notifications

    monkeypatch.setattr(notifications, "notifier", _Smtp(hang=True))
    engine, task = _engine_task(tmp_path)
    env = _confirmation("o-hang")

    async def scenario() -> None:
        started = time.monotonic()
        await engine._handle(task, "orders", _record(engine, env))
        assert time.monotonic() - started < 0.5  # the step went on
        assert len(task.effects) == 1 and dict(task.held[next(iter(task.held))]) == {7: 1}  # its offset held
        await engine._handle(task, "orders", _record(engine, env, 8))  # a replay starts no second delivery
        assert len(task.effects) == 1
        for job in task.effects:
            job.cancel()

    asyncio.run(scenario())


def test_a_background_delivery_records_once_and_one_that_keeps_failing_dead_letters_its_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents import notifications
    from tables import notified

    monkeypatch.setattr(notifications, "BACKOFF", 0.001)
    engine, task = _engine_task(tmp_path)

    async def flush(task: Any) -> None:
        pass

    monkeypatch.setattr(engine, "_flush_outputs", flush)

    async def deliver(env: dict[str, Any]) -> list[dict[str, Any]]:
        await engine._handle(task, "orders", _record(engine, env))
        await asyncio.gather(*task.effects)
        await engine._step(task)  # the result comes back as a local input
        out = [orjson.loads(o.value) for o in task.step.outputs]
        task.step.outputs.clear()
        return out

    smtp = _Smtp(failures=1)  # one failure, then delivered
    monkeypatch.setattr(notifications, "notifier", smtp)
    env = _confirmation("o-mail")
    out = asyncio.run(deliver(env))
    assert [e["type"] for e in out] == ["analytics.order_recorded", "notification.sent"]
    assert smtp.sent == [env["id"]] and notified(task.step, "o-mail") and not any(task.held.values())

    monkeypatch.setattr(notifications, "notifier", _Smtp(failures=99))
    env = _confirmation("o-nomail")
    out = asyncio.run(deliver(env))
    letters = [e for e in out if e["type"] == "event.processing.failed"]
    assert len(letters) == 1 and letters[0]["payload"]["stage"] == "notifications", out
    assert "Undelivered" in letters[0]["payload"]["error"] and letters[0]["payload"]["offset"] == 7
    assert not notified(task.step, "o-nomail") and not any(task.held.values())
    assert task.step.inflight == set()


def test_a_delivery_cancelled_before_it_ran_is_forgotten_with_the_step_s_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: a fenced reset cancelled a delivery's effect before it ran; its in-flight mark
    (cleared only when the delivery ended) stayed, and the confirmation read again started none:
    the input committed with no email, no notification.sent and no dead letter."""
    from agents import notifications

    monkeypatch.setattr(notifications, "notifier", _Smtp())
    engine, task = _engine_task(tmp_path)
    env = _confirmation("o-cancelled")

    async def scenario() -> int:
        await engine._handle(task, "orders", _record(engine, env))
        for job in task.effects:
            job.cancel()  # before it ran: what a fenced reset does at once
        task.step.reset()
        task.effects.clear()
        await engine._handle(task, "orders", _record(engine, env))  # read again
        started = len(task.effects)
        await asyncio.gather(*task.effects, return_exceptions=True)
        return started

    assert asyncio.run(scenario()) == 1  # the confirmation read again starts its delivery
