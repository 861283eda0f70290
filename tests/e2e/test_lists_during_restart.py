"""A list across workers is complete or a 503, never a partial page, while a worker restarts."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.conftest import ClusterFactory
from tests.support import eventually, http, order_body, uid

pytestmark = [pytest.mark.e2e]


def test_lists_are_complete_or_503_while_a_worker_restarts(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(2)
    survivor, restarted = cluster.workers
    product, user = uid("p"), uid("u")
    cluster.set_stock(product, 100)
    ids = {cluster.place(order_body([(product, 1, "1.00")], user_id=user)) for _ in range(16)}
    for order_id in ids:
        cluster.final(order_id)
    listing = f"{survivor.url}/orders?user_id={user}&limit=50"

    def complete() -> bool:
        r = http("GET", listing)
        return r.status == 200 and {o["order_id"] for o in r.body["orders"]} == ids

    eventually(complete, 30, 0.2, what="the full list before the restart")

    restarted.kill(signal.SIGKILL)
    restarted.start()  # same URL and data directory: the group still lists its predecessor
    answers: Counter[str] = Counter()
    deadline = time.monotonic() + 120
    while not (restarted.ready() and answers["complete"] >= 3) and time.monotonic() < deadline:
        r = http("GET", listing)
        if r.status == 503:
            assert r.headers.get("Retry-After"), r.headers
            answers["503"] += 1
        else:
            assert r.status == 200, (r.status, r.body)
            got = {o["order_id"] for o in r.body["orders"]}
            assert got == ids, f"a partial list: {len(got)} of {len(ids)} orders"
            answers["complete"] += 1
    assert answers["503"] > 0, answers  # the restart was seen
    assert answers["complete"] >= 3, answers
