"""``Store.written``: a long poll wakes on the key's next write, or gives up at its timeout."""

from __future__ import annotations

import asyncio
import time

from tests.unit.test_stage_loop import make_store


def test_a_write_wakes_the_waiter_of_its_key_only() -> None:
    store = make_store()

    async def scenario() -> tuple[float, bool]:
        started = time.monotonic()
        mine = asyncio.ensure_future(store.written("state/a", 5.0))
        other = asyncio.ensure_future(store.written("state/b", 5.0))
        await asyncio.sleep(0)  # let both waiters register
        store.apply([["state/a", {"status": "confirmed"}]])
        await mine
        woke_after = time.monotonic() - started
        other_waiting = not other.done()
        other.cancel()
        return woke_after, other_waiting

    woke_after, other_waiting = asyncio.run(scenario())
    assert woke_after < 1.0
    assert other_waiting
    assert store._watchers == {}


def test_without_a_write_the_wait_ends_at_its_timeout() -> None:
    store = make_store()
    started = time.monotonic()
    asyncio.run(store.written("state/a", 0.1))
    assert 0.09 <= time.monotonic() - started < 1.0
    assert store._watchers == {}
