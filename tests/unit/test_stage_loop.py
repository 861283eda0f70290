"""The stage loop's crash contract, checked against every point a crash can cut the changelog.

A handled event writes its dedupe record, then its writes, all to one changelog
partition, so a crash keeps a prefix of them. For every such prefix, the redelivered
event must end in the same state and re-send the same outputs as an uninterrupted run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from app.domain.common import Emit
from app.processing import SEEN, SEEN_AT, Out, Stage, envelopes, run
from schemas.envelope import make
from tables import Store, View


class LoggedTable(dict[str, Any]):
    """A dict that keeps every write in order, like a changelog partition."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((key, value))
        super().__setitem__(key, value)

    def pop(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.log.append((key, None))
        return super().pop(key, default)


def without_timestamps(value: Any) -> Any:
    """An envelope decided afresh differs from the first decision only in its times."""
    if isinstance(value, dict):
        return {_untimed_key(k): without_timestamps(v) for k, v in value.items() if k not in ("timestamp", "at")}
    if isinstance(value, list):
        return [without_timestamps(v) for v in value]
    return value


def _untimed_key(key: str) -> str:
    return SEEN_AT + key.rsplit("/", 1)[1] if key.startswith(SEEN_AT) else key


def make_store(name: str = "test_records") -> Store:
    store = Store(name, "test records", table=LoggedTable())  # type: ignore[arg-type]
    store.dedupe_retention = 3600.0
    return store


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes = b"p1"

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


@dataclass
class Event:
    value: Any
    message: Message
    key: bytes = b"p1"


@dataclass
class Stream:
    items: list[Event] = field(default_factory=list)

    async def events(self) -> Any:
        for e in self.items:
            yield e


def cmd(n: int) -> dict[str, Any]:
    return make("inventory.restock", "product", "p1", {"product_id": "p1", "quantity": n}, correlation_id="c")


def fixture() -> tuple[Store, View, View, Any]:
    store = make_store()
    stock = View(store, "stock/")
    moves = View(store, "moves/")

    async def handle(env: dict[str, Any], event: Any) -> list[Out]:
        # Two records per event, and a read of our own pending write in between.
        n = env["payload"]["quantity"]
        stock["p1"] = (stock.get("p1") or 0) + n
        moves[env["id"]] = {"n": n, "after": stock["p1"]}
        if n == 3:
            moves.pop("nothing")
        return envelopes([Emit("orders", "p1", "inventory.restocked", "product", "p1", {"n": n})], env)

    return store, stock, moves, handle


def process(store: Store, handle: Any, events: list[Event], stage: Stage | None = None) -> list[Any]:
    sent: list[Any] = []

    async def send(topic: str, key: str, env: Any) -> None:
        sent.append((topic, key, env["id"]))

    async def dlq(env: Any) -> None:
        raise AssertionError(f"dead-lettered: {env['payload']['error']}")

    stage = stage or Stage("test", "inventory")
    asyncio.run(run(stage, Stream(events), handle, store=store, send=send, send_dead_letter=dlq))  # type: ignore[arg-type]
    return sent


def test_writes_wait_for_the_handler_and_the_dedupe_record_goes_first() -> None:
    store, stock, moves, handle = fixture()
    e = Event(cmd(5), Message("t", 0, 10))
    sent = process(store, handle, [e])
    log = store.table.log  # type: ignore[attr-defined]
    assert log[0][0] == f"{SEEN}{e.value['id']}"
    assert log[1][0].startswith(SEEN_AT)
    assert [k for k, _ in log[2:]] == ["stock/p1", f"moves/{e.value['id']}", "applied/t:0"]
    assert stock.get("p1") == 5
    assert moves.get(e.value["id"]) == {"n": 5, "after": 5}
    assert len(sent) == 1


def test_every_crash_point_heals_on_redelivery() -> None:
    events = [Event(cmd(n), Message("t", 0, 10 + i)) for i, n in enumerate((5, 3, 7))]
    ref_store, _, _, handle = fixture()
    ref_sent = process(ref_store, handle, events)
    full_log = ref_store.table.log  # type: ignore[attr-defined]
    expected = without_timestamps(dict(ref_store.table))  # type: ignore[call-overload]
    for cut in range(len(full_log) + 1):
        store, _, _, handle = fixture()
        for k, v in full_log[:cut]:  # what survived in the changelog
            if v is None:
                dict.pop(store.table, k, None)  # type: ignore[arg-type]
            else:
                dict.__setitem__(store.table, k, v)  # type: ignore[index]
        sent = process(store, handle, events)  # the uncommitted inputs, redelivered
        assert without_timestamps(dict(store.table)) == expected, f"crash after {cut} changelog records"  # type: ignore[call-overload]
        assert sent == ref_sent, f"crash after {cut} changelog records"


def test_another_copy_of_a_handled_event_changes_nothing() -> None:
    store, stock, _, handle = fixture()
    e = cmd(5)
    sent = process(store, handle, [Event(e, Message("t", 0, 10)), Event(e, Message("t", 0, 11))])
    assert stock.get("p1") == 5
    assert len(sent) == 1


def test_a_failed_attempt_leaves_no_writes() -> None:
    store, stock, _, _ = fixture()
    calls = {"n": 0}

    async def flaky(env: dict[str, Any], event: Any) -> list[Out]:
        calls["n"] += 1
        stock["p1"] = (stock.get("p1") or 0) + 1
        if calls["n"] == 1:
            raise RuntimeError("transient")
        return []

    process(store, flaky, [Event(cmd(1), Message("t", 0, 1))])
    assert stock.get("p1") == 1


def test_an_event_redelivered_without_the_ones_after_it_undoes_nothing() -> None:
    """faust can redeliver an uncommitted event but not the ones after it: no regression."""
    events = [Event(cmd(n), Message("t", 0, 10 + i)) for i, n in enumerate((5, 3, 7))]
    store, stock, _, handle = fixture()
    sent = process(store, handle, events)
    before = dict(store.table)  # type: ignore[call-overload]
    again = process(store, handle, [events[0]])  # only the first comes back
    assert dict(store.table) == before  # type: ignore[call-overload]
    assert stock.get("p1") == 15
    assert again == sent[:1]  # its outputs are sent again all the same


def test_expired_dedupe_records_are_pruned_and_fresh_ones_kept() -> None:
    events = [Event(cmd(n), Message("t", 0, 10 + i)) for i, n in enumerate((5, 3, 7))]
    store, stock, _, handle = fixture()
    process(store, handle, events, Stage("test", "inventory", prune_every=1))
    assert sum(k.startswith(SEEN) for k in store.table) == 3  # type: ignore[attr-defined]
    store, stock, _, handle = fixture()
    store.dedupe_retention = -60.0  # everything written so far has expired
    process(store, handle, events, Stage("test", "inventory", prune_every=1))
    left = sorted(k for k in store.table if k.startswith((SEEN, SEEN_AT)))  # type: ignore[attr-defined]
    last = events[-1].value["id"]
    assert [k.rsplit("/", 1)[1] for k in left] == [last, last]  # only the event handled last
    assert stock.get("p1") == 15  # pruning touches no state
