"""The order history's layout: entries hold what changed, the index holds the state, envelopes are packed.

The saga's and the inventory stage's real adapters run over real partition databases
with the real indexer; a second database restored from the first one's changelog
records (one at a time, and all in one batch) must end in exactly the same state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from app.engine.step import Step
from app.engine.store import PartitionDB
from schemas.envelope import make
from tests.unit.saga_harness import one_line_order, stocked
from tests.unit.saga_harness import run as _run

pytestmark = pytest.mark.usefixtures("one_partition")  # the stages check that a message is on its key's partition


def _commit(step: Step, changelog: list[tuple[str, str, Any]]) -> None:
    writes, _ = step.freeze()
    for store, records in writes.items():
        changelog += [(store, key, value) for key, (value, _) in records.items()]
    step.db.apply(writes, {})
    step.landed()


def test_pack_and_unpack_give_back_the_same_envelope() -> None:
    from tables import pack_event, unpack_event

    env = dict(make("order.paid", "order", "o1", {"order_id": "o1"}, correlation_id="o1"))
    packed = pack_event(env, "o1")
    assert not {"entity_id", "correlation_id", "version", "metadata", "payload"} & set(packed)
    assert packed["p"] == {}  # the payload without its order id
    assert unpack_event(packed, "o1") == env
    assert list(unpack_event(packed, "o1")) == list(env)  # the envelope's field order too
    # Values other than the defaults are kept, and so are fields the packer does not know.
    other = {**dict(make("inventory.reserve", "product", "p1", {}, correlation_id="o9", version=3)), "x": 1}
    other["metadata"] = {"k": "v"}
    assert unpack_event(pack_event(other, "o1"), "o1") == other
    # A caused event leaves out its cause's id; unpacking with that cause puts it back.
    caused = dict(make("order.paid", "order", "o1", {"order_id": "o1"}, correlation_id="o1", causation_id="c1"))
    assert "causation_id" not in pack_event(caused, "o1", "c1")
    assert unpack_event(pack_event(caused, "o1", "c1"), "o1", "c1") == caused
    assert unpack_event(pack_event(caused, "o1", "c2"), "o1", "c2") == caused


@pytest.mark.parametrize("restore_in_one_batch", [False, True])
def test_entries_hold_changes_and_folding_them_gives_the_state(tmp_path: Path, restore_in_one_batch: bool) -> None:
    from agents import inventory, orders
    from tables import ORDERS, index_order, latest_order, order_history, order_rows, order_state

    db = PartitionDB(tmp_path / "orders", 0, index_order)
    saga = Step(0, db)
    stock = stocked(tmp_path / "stock")
    order_id = "o-layout"
    placed = one_line_order(order_id, 2)
    changelog: list[tuple[str, str, Any]] = []
    seen = [placed]
    reserves = _run(saga, orders.handle, placed)
    seen += reserves
    _commit(saga, changelog)
    answer = _run(stock, inventory.handle_line, reserves[0])
    seen += answer
    charge = _run(saga, orders.handle, answer[0])
    seen += charge
    _commit(saga, changelog)
    cancel = dict(
        make("order.cancel", "order", order_id, {"order_id": order_id, "reason": "x"}, correlation_id=order_id)
    )
    seen.append(cancel)
    release = _run(saga, orders.handle, cancel)
    seen += release
    released = _run(stock, inventory.handle_line, release[0])
    seen += released
    seen += _run(saga, orders.handle, released[0])
    final = latest_order(saga, order_id)
    assert final is not None and final[1]["status"] == "cancelled"
    _commit(saga, changelog)

    entries = [value for store, key, value in changelog if store == ORDERS]
    assert len(entries) == 4 and "state" in entries[0]
    assert all(
        "state" not in e and (e.get("set") or e.get("merge")) for e in entries[1:]
    )  # later entries: only what changed
    assert entries[1]["merge"]["lines"] == {"a": "reserved"}  # one line's status, not every line's
    assert all(len(orjson.dumps(e)) < len(orjson.dumps(entries[0])) for e in entries[1:])
    assert order_state(db, order_id) == final[1]
    assert order_history(db, order_id) == seen  # every envelope back, field for field

    # A second database restored from the changelog records ends in the same state and lists.
    restored = PartitionDB(tmp_path / "restored", 0, index_order)
    if restore_in_one_batch:
        restored.apply({ORDERS: {k: (v, orjson.dumps(v)) for s, k, v in changelog if s == ORDERS}}, {})
    else:
        for store, key, value in changelog:
            restored.apply({store: {key: (value, orjson.dumps(value))}}, {})
    assert order_state(restored, order_id) == final[1]
    assert latest_order(Step(0, restored), order_id) == final
    rows = list(order_rows(restored, status="cancelled", user_id=None, cursor="", limit=10))
    assert [r["order_id"] for r in rows] == [order_id]
    assert not list(order_rows(restored, status="pending", user_id=None, cursor="", limit=10))
    db.close()
    restored.close()


def test_state_changes_fold_back_to_the_new_state() -> None:
    from tables import fold_entry, state_changes

    lines = {f"p{i}": "pending" for i in range(100)}
    old = {"status": "pending", "lines": lines, "payment": {"status": "charging", "x": 1}, "reason": None}
    new = {"status": "reserved", "lines": {**lines, "p7": "reserved"}, "payment": {"status": "charged"}, "gone": 1}
    changes = state_changes(old, new)
    assert changes["merge"] == {"lines": {"p7": "reserved"}}  # a mapping that only gained or changed keys
    assert changes["set"] == {"status": "reserved", "payment": {"status": "charged"}, "gone": 1}  # lost a key
    assert changes["unset"] == ["reason"]
    assert fold_entry(old, changes) == new
    assert state_changes(new, new) == {}
