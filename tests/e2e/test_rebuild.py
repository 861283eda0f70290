"""The rebuild end to end: read models rebuilt from the topics equal the live ones.

Two real workers take 500+ concurrent orders of mixed outcomes (charged, declined,
insufficient funds, flaky gateway, out of stock, customer cancels, shipped and
delivered); once every effect has landed, ``faust -A app rebuild --compare`` reads
the topics and must find no difference, and its JSON output must equal every
``GET /orders/{id}``, every ``GET /inventory/{id}`` and ``GET /analytics/summary``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ClusterFactory
from tests.support import FINAL, ROOT, Cluster, Response, eventually, http, order_body

pytestmark = [pytest.mark.e2e]

ORDERS = int(os.environ.get("REBUILD_ORDERS", "520"))
CARDS = [("4242424242424242", 70), ("4000000000000002", 10), ("4000000000009995", 10), ("4000000000000119", 10)]
ENV = {"ORDERSTREAM_GATEWAY_TIMEOUT": "2", "ORDERSTREAM_PAYMENT_TIMEOUT": "60"}


def _retrying(call: Any, ok: Any, what: str, timeout: float = 120.0) -> Response:
    """Repeat ``call`` until ``ok(response)``, riding out a busy worker (timeouts, 503s)."""

    def attempt() -> Response | None:
        resp = call()
        return resp if ok(resp) else None

    return eventually(attempt, timeout, 0.2, what=what)


def _place(cluster: Cluster, n: int, body: dict[str, Any], cancel: bool) -> str:
    url = cluster.urls[n % 2]
    resp = _retrying(
        lambda: http("POST", url + "/orders", body, headers={"Idempotency-Key": f"rebuild-{n}"}, timeout=20),
        lambda r: r.status == 202,
        f"place order {n}",
    )
    order_id = str(resp.body["order_id"])
    if cancel:
        # 404 until the saga has the order; 409 once it is past reserved: both are fine outcomes.
        _retrying(
            lambda: http("POST", cluster.urls[(n + 1) % 2] + f"/orders/{order_id}/cancel", timeout=20),
            lambda r: r.status in (202, 409),
            f"cancel order {n}",
        )
    return order_id


def _views(cluster: Cluster, paths: list[str], *, final: bool = False) -> list[dict[str, Any]]:
    """GET every path (spread over both workers) and return the JSON bodies; ``final``: once the order is final."""

    def ok(resp: Response) -> bool:
        return resp.status == 200 and (not final or resp.body["status"] in FINAL)

    def get(i_path: tuple[int, str]) -> dict[str, Any]:
        i, path = i_path
        return dict(_retrying(lambda: cluster.get(path, i % 2, timeout=40), ok, f"GET {path}", 240).body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(get, enumerate(paths)))


def _snapshot(cluster: Cluster) -> dict[str, Any]:
    """Every order, every product and the summary as the API lists them."""

    def pages(path: str, field: str, key: str) -> dict[str, Any]:
        rows: dict[str, Any] = {}
        cursor = ""
        while True:
            page = cluster.get(f"{path}?limit=500" + (f"&cursor={cursor}" if cursor else ""), timeout=30).body
            rows.update((row[key], row) for row in page[field])
            cursor = page["next_cursor"]
            if not cursor:
                return rows

    return {
        "orders": pages("/orders", "orders", "order_id"),
        "stock": pages("/inventory", "products", "product_id"),
        "analytics": cluster.get("/analytics/summary", timeout=30).body,
    }


def _settled(cluster: Cluster, ids: list[str]) -> dict[str, Any]:
    """Wait until every effect has landed: all final, nothing reserved, all recorded, and nothing moves."""
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        snap = _snapshot(cluster)
        statuses = Counter(o["status"] for o in snap["orders"].values())
        paid = statuses["confirmed"] + statuses["shipped"] + statuses["delivered"]
        done = (
            len(snap["orders"]) == len(ids)
            and all(o["status"] in FINAL for o in snap["orders"].values())
            and all(s["reserved"] == 0 for s in snap["stock"].values())
            and snap["analytics"]["orders_recorded"] == paid
        )
        stable, last = snap == last, snap
        return snap if done and stable else None

    return eventually(check, 240, 2.0, what="the cluster settled")


def test_rebuild_equals_the_live_read_models(make_cluster: ClusterFactory, broker_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    cluster = make_cluster(2, env=ENV)
    app_id = cluster.workers[0].app_id
    rng = random.Random(20240501)

    products = [f"{app_id}-p{i}" for i in range(10)]
    for i, pid in enumerate(products):
        cluster.set_stock(pid, 12 if i < 2 else 400, i=i % 2)
    restock = cluster.post(f"/inventory/{products[0]}/restock", {"quantity": 5})
    assert restock.status == 202
    eventually(lambda: cluster.get(f"/inventory/{products[0]}").body["on_hand"] == 17, 30, what="restock visible")

    bodies = []
    for n in range(ORDERS):
        lines = rng.sample(products, k=rng.choice([1, 1, 2, 3]))
        items = [(pid, rng.randint(1, 3), f"{rng.randint(1, 9999) / 100:.2f}") for pid in lines]
        card = rng.choices([c for c, _ in CARDS], weights=[w for _, w in CARDS])[0]
        bodies.append(order_body(items, user_id=f"u{n % 40}", card=card))
    with ThreadPoolExecutor(max_workers=12) as pool:
        ids = list(pool.map(lambda n: _place(cluster, n, bodies[n], cancel=n % 23 == 5), range(ORDERS)))
    assert len(set(ids)) == ORDERS
    placed_at = time.monotonic()

    finals = _views(cluster, [f"/orders/{oid}?wait=10" for oid in ids], final=True)
    confirmed = [o["order_id"] for o in finals if o["status"] == "confirmed"]
    to_ship, to_deliver = confirmed[:24], confirmed[:12]
    ship = {"carrier": "UPS", "tracking_number": "1Z999"}
    for n, oid in enumerate(to_ship):
        assert cluster.post(f"/orders/{oid}/ship", ship, i=n % 2).status == 202
    for oid in to_deliver:
        eventually(lambda oid=oid: cluster.get(f"/orders/{oid}").body["status"] == "shipped", 60, what="shipped")
        assert cluster.post(f"/orders/{oid}/deliver").status == 202

    live = _settled(cluster, ids)
    settled_at = time.monotonic()
    outcomes = Counter(o["status"] for o in live["orders"].values())
    reasons = Counter(o.get("reason") for o in live["orders"].values())
    print(f"outcomes {dict(outcomes)}, reasons {dict(reasons)}")
    assert outcomes["shipped"] == len(to_ship) - len(to_deliver)
    assert outcomes["delivered"] == len(to_deliver)
    assert outcomes["rejected"] > 0
    assert outcomes["confirmed"] > 0
    assert {"card_declined", "insufficient_funds", "out_of_stock", "customer_cancelled"} <= set(reasons)

    # The real CLI, as an operator runs it.
    output = tmp_path / "rebuilt.json"
    env = {
        **os.environ,
        "ORDERSTREAM_BROKER": broker_url,
        "ORDERSTREAM_APP_ID": app_id,
        "ORDERSTREAM_PARTITIONS": os.environ.get("ORDERSTREAM_TEST_PARTITIONS", "4"),
        **ENV,
    }
    cmd = [sys.executable, "-m", "faust", "-A", "app", "rebuild", "--compare", cluster.urls[1], "--output", str(output)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    cli_at = time.monotonic()
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"no differences from {cluster.urls[1]}" in proc.stdout
    assert f"rebuilt {ORDERS} orders, {len(products)} products from " in proc.stdout.splitlines()[-1]
    assert "100%" in proc.stderr  # the progress bar ran to its end

    rebuilt = json.loads(output.read_text())
    # Every order, field for field, as GET /orders/{id} answers it.
    assert sorted(rebuilt["orders"]) == sorted(ids)
    by_id = _views(cluster, [f"/orders/{oid}" for oid in ids])
    for oid, view in zip(ids, by_id, strict=True):
        assert rebuilt["orders"][oid] == view, oid
    # Every product, as GET /inventory/{id} answers it.
    assert sorted(rebuilt["stock"]) == sorted(products)
    for pid, view in zip(products, _views(cluster, [f"/inventory/{pid}" for pid in products]), strict=True):
        assert rebuilt["stock"][pid] == view, pid
    # Analytics: orders by status, revenue, per-minute windows, top products.
    summary = cluster.get("/analytics/summary", 1).body
    for key in ("orders_by_status", "revenue", "orders_recorded", "revenue_per_minute", "top_products"):
        assert rebuilt["analytics"][key] == summary[key], key
    assert rebuilt["analytics"] == summary
    assert rebuilt["analytics"]["orders_by_status"] == dict(sorted(outcomes.items()))

    # The Python API gives the same models.
    from app import rebuild as rb

    models = asyncio.run(rb.rebuild_from_kafka(broker_url.split("://", 1)[-1], app_id, progress=False))
    assert models.as_dict() == rebuilt
    print(
        f"timing: start, stock and placing {placed_at - started:.0f}s, settling {settled_at - placed_at:.0f}s, "
        f"cli {cli_at - settled_at:.1f}s; {proc.stdout.splitlines()[-1]}"
    )
