"""The dashboard as a person sees it: rendered in headless Chromium, charts drawn, under load.

Each chart writes how many points it plotted (``data-points``, ``data-nonzero``) into the
DOM, read back with ``chromium --dump-dom``; the screenshot is then checked for the
charts' line colours, which appear nowhere else on the page. Runs wherever Debian's
``chromium`` is installed (``make chromium``); skipped elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.web import dashboard
from tests import dashboard_render as render
from tests.conftest import ClusterFactory
from tests.support import FINAL, eventually, http, order_body, uid

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(render.chromium() is None, reason="chromium is not installed (make chromium)"),
]

SCREENSHOTS = Path(__file__).resolve().parents[2] / ".data" / "screenshots"


def _charts(dom: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    attrs, text = render.elements(dom)
    for chart in ("chart-throughput", "chart-latency", "chart-lag"):
        assert "data-points" in attrs[chart], f"{chart} was never drawn: {text.get(chart)!r}"
    return attrs, text


def _nonzero(attrs: dict[str, dict[str, str]], chart: str) -> int:
    return int(attrs[chart]["data-nonzero"])


# --- the drawing, on synthetic samples of every family (no broker) --------------------------


def _synthetic_data() -> dict[str, Any]:
    """Two workers' samples over two minutes of load, through the same code the worker runs."""
    by_worker = {}
    now = time.time()
    for w in range(2):
        registry = CollectorRegistry()
        placed = Counter("orderstream_orders_placed_total", "", registry=registry)
        outcomes = Counter("orderstream_order_outcomes_total", "", ["status"], registry=registry)
        events = Counter("orderstream_events_processed_total", "", ["stage", "type"], registry=registry)
        latency = Histogram(
            "orderstream_order_latency_seconds",
            "",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        lag = Gauge("orderstream_consumer_lag", "", ["topic", "partition"], registry=registry)
        sampler = dashboard.Sampler(registry)
        for i in range(60):
            n = 5 + (i % 7) + w
            placed.inc(n)
            outcomes.labels("confirmed").inc(n - 2)
            outcomes.labels("rejected").inc(1)
            events.labels("orders", "order.placed").inc(n * 6)
            for k in range(n):
                latency.labels("confirmed").observe(0.04 + 0.03 * ((i + k) % 9))
            lag.labels("os.orders", str(w)).set((i * 13 + w * 7) % 40)
            sampler.take(now - (60 - i) * dashboard.INTERVAL)
        by_worker[f"http://127.0.0.1:{6066 + w}"] = list(sampler.samples)
    return dashboard.dashboard_data(by_worker, {})


@pytest.fixture
def synthetic_site() -> Iterator[str]:
    data = _synthetic_data()
    pages = {
        "/": (dashboard.PAGE, "text/html"),
        "/dashboard/data": (json.dumps(data).encode(), "application/json"),
        "/cluster": (
            json.dumps(
                {
                    "me": "http://127.0.0.1:6066",
                    "ready": True,
                    "workers": [
                        {"url": "http://127.0.0.1:6066", "partitions": [0, 1, 2, 3]},
                        {"url": "http://127.0.0.1:6067", "partitions": [4, 5, 6, 7]},
                    ],
                }
            ).encode(),
            "application/json",
        ),
    }

    class Site(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, kind = pages.get(self.path.split("?")[0], (b'{"error": "not_found"}', "application/json"))
            self.send_response(200 if self.path.split("?")[0] in pages else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()


def test_every_flow_chart_draws_synthetic_load(synthetic_site: str) -> None:
    attrs, text = _charts(render.dump_dom(synthetic_site))
    for chart in ("chart-throughput", "chart-latency", "chart-lag"):
        assert _nonzero(attrs, chart) > 20, (chart, attrs[chart], text[chart])
    assert "p99" in text["chart-latency"] and "ms" in text["chart-latency"], text["chart-latency"]
    assert text["workers"].count("http://127.0.0.1:60") == 2, text["workers"]
    assert "4: 0–3" in text["workers"], text["workers"]

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    image = render.read_png(render.screenshot(synthetic_site, SCREENSHOTS / "dashboard-synthetic.png"))
    for name, colour in [
        ("placed", render.PLACED),
        ("finished", render.FINISHED),
        ("p50", render.P50),
        ("p99", render.P99),
        ("lag", render.LAG),
    ]:
        assert image.count(colour) > 100, f"the {name} line is not on the screenshot"


# --- a real worker under load ----------------------------------------------------------


def test_dashboard_shows_flow_under_load(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(2)
    product = uid("p")
    cluster.set_stock(product, 10_000)
    # Orders placed for three sampling intervals at least, so every chart has a line between
    # samples, not a dot (a burst that finishes within one interval draws the p50 as a point).
    orders: list[str] = []
    started = time.time()
    while len(orders) < 50 or time.time() - started < 3 * dashboard.INTERVAL:
        orders.append(cluster.place(order_body([(product, 1, "3.50")], user_id=uid("u")), i=len(orders) % 2))
    for order_id in orders:
        assert cluster.final(order_id)["status"] in FINAL
    done = time.time()
    eventually(  # a sample after the last outcome on every worker: a rate needs the samples on both sides
        lambda: all(
            w["t"] and w["t"][-1] >= done + dashboard.INTERVAL
            for w in http("GET", cluster.urls[0] + "/dashboard/data").body["workers"]
        ),
        30,
        0.5,
        what="a dashboard sample after the last order",
    )

    exported = http("GET", cluster.urls[0] + "/metrics").raw.decode()
    url = cluster.urls[0] + "/"
    attrs, text = _charts(render.dump_dom(url))
    assert _nonzero(attrs, "chart-throughput") > 0, text["chart-throughput"]
    if "orderstream_order_latency_seconds_bucket" in exported:
        assert _nonzero(attrs, "chart-latency") > 0, text["chart-latency"]
    else:  # the histogram is not exported by this build: the chart says so instead of breaking
        assert "no data yet" in text["chart-latency"], text["chart-latency"]
    if "orderstream_consumer_lag{" in exported:
        assert int(attrs["chart-lag"]["data-points"]) > 0, text["chart-lag"]
    for worker in cluster.urls:
        assert worker in text["workers"], text["workers"]
    assert "no data yet" not in text["workers"], text["workers"]

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    image = render.read_png(render.screenshot(url, SCREENSHOTS / "dashboard-under-load.png"))
    assert image.count(render.PLACED) > render.MIN_LINE_PIXELS, "the orders placed/s line is not on the screenshot"
    assert image.count(render.FINISHED) > render.MIN_LINE_PIXELS, "the orders finished/s line is not on the screenshot"
    if "orderstream_order_latency_seconds_bucket" in exported:
        assert image.count(render.P50) > render.MIN_LINE_PIXELS, "the p50 latency line is not on the screenshot"


def test_the_dashboard_lists_dead_letters_without_the_admin_token_and_without_their_originals(
    make_cluster: ClusterFactory, kafka_bootstrap: str
) -> None:
    """With an admin token set (as beyond loopback it must be), ``GET /dlq`` is the admin's; the
    public dashboard still lists where and why messages failed, never what they held."""
    import asyncio

    from tests.e2e.test_dead_letters import topic
    from tests.e2e.test_redrive_processed import _produce

    cluster = make_cluster(2, env={"ORDERSTREAM_ADMIN_TOKEN": "dash-s3cret"})
    secret = "secret-" + uid("x")
    bad = {"id": uid("bad"), "type": "order.no_such_type", "version": 1, "payload": {"note": secret}}
    asyncio.run(_produce(kafka_bootstrap, [(topic(cluster, "orders"), "k", bad)]))
    assert http("GET", cluster.urls[0] + "/dlq").status == 401
    rows = eventually(
        lambda: http("GET", cluster.urls[1] + "/dashboard/dead_letters").body["messages"], 60, what="a dead letter"
    )
    assert secret not in json.dumps(rows) and "original" not in rows[0], rows
    assert rows[0]["source_topic"] == topic(cluster, "orders") and rows[0]["status"] == "dead", rows
    dom = render.dump_dom(cluster.urls[0] + "/")
    assert str(rows[0]["id"])[:8] in dom and secret not in dom
