"""No stranded orders: a reservation that never answers (dead-lettered or lost) ends the order at its deadline.

The saga's and the inventory stage's real adapters run over real partition databases;
the deadline comes as the saga timer's local ``order.cancel`` (reason ``pending_timeout``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.step import Step
from app.engine.store import PartitionDB
from schemas.envelope import derived_id, make
from tests.unit.saga_harness import one_line_order, stocked
from tests.unit.saga_harness import run as _run

pytestmark = pytest.mark.usefixtures("one_partition")  # the stages check that a message is on its key's partition


def test_an_order_whose_reservation_was_dead_lettered_is_rejected_and_every_line_released(tmp_path: Path) -> None:
    from agents import inventory, orders
    from tables import latest_order

    saga = Step(0, PartitionDB(tmp_path / "orders", 0))
    stock = Step(0, PartitionDB(tmp_path / "stock", 0))
    for product in ("a", "b"):
        _run(
            stock,
            inventory.handle_restock,
            dict(
                make(
                    "inventory.set_stock",
                    "product",
                    product,
                    {"product_id": product, "on_hand": 5},
                    correlation_id=product,
                )
            ),
        )
    order_id = "o-stranded"
    payload = {
        "order_id": order_id,
        "user_id": "u1",
        "items": [
            {"product_id": "a", "quantity": 2, "price_cents": 100},
            {"product_id": "b", "quantity": 1, "price_cents": 100},
        ],
        "total_cents": 300,
        "currency": "USD",
        "payment": {"method": "card", "token": "tok_visa", "last4": "4242"},
    }
    placed = dict(make("order.placed", "order", order_id, payload, correlation_id=order_id, version=2))
    reserves = _run(saga, orders.handle, placed)
    assert [e["type"] for e in reserves] == ["inventory.reserve", "inventory.reserve"]
    # Line a is reserved; line b's reserve command is dead-lettered: it never answers.
    answer = _run(stock, inventory.handle_line, next(e for e in reserves if e["payload"]["product_id"] == "a"))
    assert stock.get("stock_records", "stock/a")["reserved"] == 2
    _run(saga, orders.handle, answer[0])
    assert latest_order(saga, order_id)[1]["status"] == "pending"

    # The saga's timer: the pending deadline passed.
    expire = dict(
        make(
            "order.cancel",
            "order",
            order_id,
            {"order_id": order_id, "reason": "pending_timeout"},
            correlation_id=order_id,
            event_id=derived_id(f"pending_timeout/{order_id}", 0),
        )
    )
    out = _run(saga, orders.handle, expire)
    releases = [e for e in out if e["type"] == "inventory.release"]
    # Line b has no answer: it is released too (a release of a line never reserved does nothing).
    assert [r["payload"]["product_id"] for r in releases] == ["a", "b"]
    # Rejected once line a is back, not before (line b's release never answers: not waited for).
    assert latest_order(saga, order_id)[1]["status"] == "pending"
    assert not any(e["type"] == "order.rejected" for e in out)
    answers = [a for release in releases for a in _run(stock, inventory.handle_line, release)]
    assert [a["payload"]["product_id"] for a in answers] == ["a"]
    assert stock.get("stock_records", "stock/a") == {"on_hand": 5, "reserved": 0, "sold": 0}
    assert stock.get("stock_records", "stock/b") == {"on_hand": 5, "reserved": 0, "sold": 0}
    ended = _run(saga, orders.handle, answers[0])
    assert [e["type"] for e in ended] == ["order.rejected"]
    state = latest_order(saga, order_id)[1]
    assert (state["status"], state["reason"]) == ("rejected", "reservation_timeout")

    # If line b's reservation turns up after all (a redrive), it is given straight back.
    late = _run(stock, inventory.handle_line, next(e for e in reserves if e["payload"]["product_id"] == "b"))
    back = _run(saga, orders.handle, late[0])
    assert [e["type"] for e in back] == ["inventory.release"]
    _run(stock, inventory.handle_line, back[0])
    assert stock.get("stock_records", "stock/b") == {"on_hand": 5, "reserved": 0, "sold": 0}
    assert latest_order(saga, order_id)[1]["status"] == "rejected"


def test_a_line_reserved_whose_answer_was_lost_is_released_at_the_deadline(tmp_path: Path) -> None:
    from agents import inventory, orders
    from tables import latest_order

    saga = Step(0, PartitionDB(tmp_path / "orders", 0))
    stock = stocked(tmp_path / "stock")
    order_id = "o-lost-answer"
    (reserve,) = _run(saga, orders.handle, one_line_order(order_id, 2))
    _run(stock, inventory.handle_line, reserve)  # reserved; its answer never reaches the saga
    assert stock.get("stock_records", "stock/a")["reserved"] == 2
    expire = make(
        "order.cancel",
        "order",
        order_id,
        {"order_id": order_id, "reason": "pending_timeout"},
        correlation_id=order_id,
        event_id=derived_id(f"pending_timeout/{order_id}", 0),
    )
    out = _run(saga, orders.handle, dict(expire))
    for release in (e for e in out if e["type"] == "inventory.release"):
        answer = _run(stock, inventory.handle_line, release)
        _run(saga, orders.handle, answer[0])
    assert stock.get("stock_records", "stock/a") == {"on_hand": 5, "reserved": 0, "sold": 0}
    assert latest_order(saga, order_id)[1]["lines"] == {"a": "released"}


def test_a_deadline_whose_cancel_is_not_committed_yet_is_not_cancelled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe 24: while commits failed, the timer read the committed deadline index (still
    ``reserved``) and sent the same payment_timeout cancel again, caused by itself; the saga
    took it a second time and its ``order.cancelled`` got the id of the first one's release."""
    import time
    from collections import deque
    from types import SimpleNamespace

    from agents import inventory, orders
    from tables import index_order, latest_order

    saga = Step(0, PartitionDB(tmp_path / "orders", 0, index_order))  # with the deadline index
    stock = stocked(tmp_path / "stock")
    order_id = "o-timer"
    (reserve,) = _run(saga, orders.handle, one_line_order(order_id, 1))
    (reserved,) = _run(stock, inventory.handle_line, reserve)
    _run(saga, orders.handle, reserved)
    assert latest_order(saga, order_id)[1]["status"] == "reserved"
    writes, _ = saga.freeze()  # committed: the deadline index lists the order as reserved
    saga.db.apply(writes, {})
    saga.landed()

    task = SimpleNamespace(ready=True, step=saga, local=deque())
    engine = SimpleNamespace(tasks={0: task}, wake=lambda: None, replayed=lambda task: True)
    later = time.time() + 10 * 3600
    monkeypatch.setattr(time, "time", lambda: later)  # past the payment deadline
    orders.expire_due(engine)  # type: ignore[arg-type]
    ((_, cancel, _, _, _),) = list(task.local)
    task.local.clear()
    assert cancel["payload"]["reason"] == "payment_timeout"
    _run(saga, orders.handle, cancel)  # handled, not committed yet (the commit fails, say)
    orders.expire_due(engine)  # type: ignore[arg-type]
    assert list(task.local) == []  # not sent again


def test_a_task_still_reading_its_inputs_again_after_a_restore_fires_no_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe 25: at-least-once, after a broker outage failed a commit, the restored task stood in
    the state before it (an order ``reserved``, its deadline passed) while the order's later
    inputs, already answered once, waited to be read again; the timer cancelled it first, and
    an order confirmed, notified and counted ended ``cancelled`` and refunded."""
    import time
    from collections import deque
    from types import SimpleNamespace

    from agents import inventory, orders
    from tables import index_order

    saga = Step(0, PartitionDB(tmp_path / "orders", 0, index_order))
    stock = stocked(tmp_path / "stock")
    (reserve,) = _run(saga, orders.handle, one_line_order("o-replay", 1))
    _run(saga, orders.handle, _run(stock, inventory.handle_line, reserve)[0])
    writes, _ = saga.freeze()
    saga.db.apply(writes, {})
    saga.landed()
    task = SimpleNamespace(ready=True, step=saga, local=deque())
    replayed = [False]
    engine = SimpleNamespace(tasks={0: task}, wake=lambda: None, replayed=lambda task: replayed[0])
    later = time.time() + 10 * 3600
    monkeypatch.setattr(time, "time", lambda: later)  # past the payment deadline
    orders.expire_due(engine)  # type: ignore[arg-type]
    assert list(task.local) == []  # its inputs not read again yet: the deadline waits
    replayed[0] = True
    orders.expire_due(engine)  # type: ignore[arg-type]
    assert [c["payload"]["reason"] for _, c, *_ in task.local] == ["payment_timeout"]
