"""The HTTP edge: bad input answers 4xx and produces nothing; card numbers never leave it."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.crash import scan_topic
from tests.support import Cluster, eventually, http, order_body, uid

pytestmark = [pytest.mark.e2e]

TEST_CARDS = ["4242424242424242", "4000000000000002", "4000000000009995", "4000000000000119", "4000000000000341"]


def _count(cluster: Cluster, user: str) -> int:
    return len(cluster.get(f"/orders?user_id={user}&limit=500").body["orders"])


def test_bad_input_is_rejected_and_produces_nothing(cluster2: Cluster) -> None:
    user, product = uid("u"), uid("p")
    url = cluster2.urls[0] + "/orders"

    bad_json = http("POST", url, raw=b'{"user_id": "x", "items": [')
    assert bad_json.status == 400
    assert bad_json.body["error"] == "bad_json"

    too_big = http("POST", url, raw=b'{"pad": "' + b"x" * (65 * 1024) + b'"}')
    assert too_big.status == 413
    assert too_big.body["error"] == "too_large"

    good = order_body([(product, 1, "1.00")], user_id=user)
    cases = {
        "user_id": {**good, "user_id": ""},
        "items": {**good, "items": []},
        "items[0].quantity": {**good, "items": [{"product_id": product, "quantity": 0, "price": "1.00"}]},
        "items[0].price": {**good, "items": [{"product_id": product, "quantity": 1, "price": "1.001"}]},
        "items[0].product_id": {**good, "items": [{"product_id": "bad id!", "quantity": 1, "price": "1.00"}]},
        "currency": {**good, "currency": "dollars"},
        "user_email": {**good, "user_email": "not-an-email"},
        "payment.card_number": {**good, "payment": {**good["payment"], "card_number": "4242424242424241"}},
        "payment.expiry": {**good, "payment": {**good["payment"], "expiry": "13/99"}},
        "payment.cvv": {**good, "payment": {**good["payment"], "cvv": "12"}},
        "payment": {**good, "payment": "card"},
    }
    for field, body in cases.items():
        resp = http("POST", url, body)
        assert resp.status == 422, (field, resp)
        assert resp.body["error"] == "invalid"
        assert field in [d["field"] for d in resp.body["details"]], (field, resp.body)
    not_object = http("POST", url, [1, 2])
    assert not_object.status == 422

    assert http("GET", cluster2.urls[0] + "/orders?limit=0").status == 422
    assert http("GET", cluster2.urls[0] + "/orders/x?as_of=yesterday").status == 422

    # Nothing was produced: no order for this user, no reservation, and the worker still serves.
    assert _count(cluster2, user) == 0
    assert cluster2.get(f"/inventory/{product}").body["reserved"] == 0
    assert cluster2.get("/health").status == 200
    cluster2.set_stock(product, 1)
    assert cluster2.final(cluster2.place(good))["status"] == "confirmed"


def test_errors_have_the_spec_shape_and_unknown_routes_are_json(cluster2: Cluster) -> None:
    resp = cluster2.get("/no/such/route")
    assert resp.status == 404
    assert set(resp.body) == {"error", "message", "details"}
    assert cluster2.get("/table").status == 404  # Faust's raw table pages are off


def test_operational_endpoints(cluster2: Cluster) -> None:
    assert cluster2.get("/health").status == 200
    assert cluster2.get("/ready", 1).status == 200
    metrics = http("GET", cluster2.urls[0] + "/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"  # probe 27
    assert "orderstream_events_processed_total" in metrics.raw.decode()
    page = http("GET", cluster2.urls[1] + "/")
    assert page.status == 200
    assert b"<html" in page.raw.lower()
    view = cluster2.get("/cluster").body
    assert sorted(w["url"] for w in view["workers"]) == sorted(cluster2.urls)


def _served(url: str, route: str) -> float:
    text = http("GET", url + "/metrics").raw.decode()
    prefix = f'orderstream_http_requests_total{{route="{route}",status="200"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_one_request_is_handled_and_counted_once(cluster2: Cluster) -> None:
    """Faust initialises its web server twice; the routes and middlewares are added once."""
    url = cluster2.urls[0]
    before = _served(url, "/openapi.json")
    assert http("GET", url + "/openapi.json").status == 200
    assert _served(url, "/openapi.json") - before == 1


def test_no_card_number_in_any_topic(cluster2: Cluster, kafka_bootstrap: str) -> None:
    product = uid("p")
    cluster2.set_stock(product, 20)
    ids = [cluster2.place(order_body([(product, 1, "2.00")], card=c), i=n % 2) for n, c in enumerate(TEST_CARDS)]
    for order_id in ids:
        cluster2.final(order_id)
    app_id = cluster2.workers[0].app_id
    topics = asyncio.run(_app_topics(kafka_bootstrap, app_id))
    assert any(t.endswith(".orders") for t in topics)
    assert any(t.endswith("-changelog") for t in topics)
    seen = 0
    for raw in asyncio.run(scan_topic(kafka_bootstrap, topics, raw=True)):
        seen += 1
        for card in TEST_CARDS:
            assert card.encode() not in raw, "card number found in a topic"
    assert seen > 0
    logs = "\n".join(w.log_text() for w in cluster2.workers)
    for card in TEST_CARDS:
        assert card not in logs
    metrics = http("GET", cluster2.urls[0] + "/metrics").raw.decode()
    for card in TEST_CARDS:
        assert card not in metrics
    # The order read model keeps only the last four digits.
    body = json.dumps(cluster2.get(f"/orders/{ids[0]}").body)
    assert TEST_CARDS[0] not in body


async def _app_topics(bootstrap: str, app_id: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(app_id))
    finally:
        await admin.close()


def test_admin_endpoints_need_the_token(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(1, env={"ORDERSTREAM_ADMIN_TOKEN": "s3cret"})
    product = uid("p")
    refused = cluster.put(f"/inventory/{product}", {"on_hand": 5})
    assert refused.status == 401
    # RFC 9110 §11.6.1: a 401 names the scheme it takes (probe 27: it had no WWW-Authenticate).
    assert refused.headers.get("WWW-Authenticate", "").startswith("Bearer ")
    assert cluster.post(f"/inventory/{product}/restock", {"quantity": 5}).status == 401
    assert cluster.post("/dlq/redrive", {}).status == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert cluster.put(f"/inventory/{product}", {"on_hand": 5}, headers=auth).status == 202
    assert cluster.post(f"/inventory/{product}/restock", {"quantity": 2}, headers=auth).status == 202
    eventually(lambda: cluster.get(f"/inventory/{product}").body["on_hand"] == 7, 20, what="restocked")
