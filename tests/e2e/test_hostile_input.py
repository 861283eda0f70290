"""Hostile HTTP input against two real workers: every answer a clear 4xx, fast, and nothing stalls."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support import Cluster, Worker, eventually, http, order_body, uid

pytestmark = [pytest.mark.e2e]

#: The simulated gateway never answers this card (SPEC's table).
HANGING_CARD = "4000000000000341"

TOKEN = "hostile-s3cret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def cluster(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two workers with an admin token (each test uses its own ids)."""
    base = tmp_path_factory.mktemp("hostile")
    app = uid("os")
    env = {"ORDERSTREAM_ADMIN_TOKEN": TOKEN, "ORDERSTREAM_GATEWAY_TIMEOUT": "2", "ORDERSTREAM_PAYMENT_TIMEOUT": "20"}
    workers = [Worker(app_id=app, broker=broker_url, datadir=base / f"w{i}", env=env).start() for i in range(2)]
    c = Cluster(workers)
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop()


def raw_request(url: str, head: bytes, timeout: float = 5.0) -> int:
    """Send ``head`` (request line and headers, raw bytes) and return the status code."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head)
        answer = sock.recv(65536)
    return int(answer.split(b" ", 2)[1])


def test_nan_inf_or_huge_wait_is_422_at_once_and_the_worker_keeps_ticking(cluster: Cluster) -> None:
    bad = ["nan", "inf", "1e309", "-inf", "NaN"]

    def ask(i: int) -> tuple[int, float]:
        started = time.monotonic()
        resp = http("GET", f"{cluster.urls[i % 2]}/orders/{uid('o')}?wait={bad[i % len(bad)]}", timeout=10)
        return resp.status, time.monotonic() - started

    with ThreadPoolExecutor(10) as pool:
        answers = pool.map(ask, range(10))
        health = [http("GET", u + "/health", timeout=5) for u in cluster.urls for _ in range(3)]
        results = list(answers)
    assert all(status == 422 and took < 1.0 for status, took in results), results
    assert all(h.status == 200 for h in health)
    # Timers still tick: a long-poll of 0.5 s on an unknown order ends after about 0.5 s.
    started = time.monotonic()
    assert cluster.get(f"/orders/{uid('o')}?wait=0.5").status == 404
    assert time.monotonic() - started < 2.0


def test_a_2_to_the_64_price_and_other_non_decimal_prices_are_422(cluster: Cluster) -> None:
    product, user = uid("p"), uid("u")
    for price in ["184467440737095516.15", "1e30", 1e308, 12.5, "1_000", "١٢", "1000000.01"]:
        resp = cluster.post("/orders", order_body([(product, 1, price)], user_id=user))  # type: ignore[list-item]
        assert resp.status == 422, (price, resp)
        assert [d["field"] for d in resp.body["details"]] == ["items[0].price"], resp.body
    assert cluster.get(f"/orders?user_id={user}").body["orders"] == []


def test_card_numbers_of_superscript_or_arabic_indic_digits_are_422(cluster: Cluster) -> None:
    for card in ["424242424242424²", "٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢"]:
        resp = cluster.post("/orders", order_body([(uid("p"), 1, "1.00")], card=card))
        assert resp.status == 422, resp
        assert card not in json.dumps(resp.body, ensure_ascii=False)


def test_a_4301_digit_limit_is_422(cluster: Cluster) -> None:
    for path in ("/orders", "/inventory"):
        assert cluster.get(f"{path}?limit={'1' * 4301}").status == 422
    assert cluster.get(f"/dlq?limit={'1' * 4301}", headers=ADMIN).status == 422


def test_a_non_utf8_authorization_header_is_401(cluster: Cluster) -> None:
    url = cluster.urls[0]
    for request_line in (b"POST /dlq/redrive", b"GET /dlq"):
        head = (
            request_line + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3\x28\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        assert raw_request(url, head) == 401, request_line
    order_id = uid("o")
    for i in (0, 1):  # one worker owns the order, the other forwards (dropping the header)
        head = (
            f"GET /orders/{order_id}/events HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
        )
        assert raw_request(cluster.urls[i], head) == 404
    assert cluster.get("/health").status == 200


def test_malformed_json_on_redrive_is_400(cluster: Cluster) -> None:
    resp = cluster.post("/dlq/redrive", raw=b'{"ids": [', headers=ADMIN)
    assert resp.status == 400, resp
    assert resp.body["error"] == "bad_json"
    assert cluster.post("/dlq/redrive", raw=b'{"ids": "all"}', headers=ADMIN).status == 422


def test_a_body_that_is_not_declared_json_is_415(cluster: Cluster) -> None:
    product = uid("p")
    plain = {**ADMIN, "Content-Type": "text/plain"}
    assert cluster.post(f"/inventory/{product}/restock", {"quantity": 5}, headers=plain).status == 415
    assert cluster.put(f"/inventory/{product}", {"on_hand": 5}, headers=plain).status == 415
    assert cluster.post("/dlq/redrive", {}, headers=plain).status == 415
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert cluster.post("/orders", order_body([(product, 1, "1.00")]), headers=form).status == 415
    assert cluster.post(f"/orders/{uid('o')}/cancel", {}, headers=plain).status == 415
    charset = {**ADMIN, "Content-Type": "application/json; charset=utf-8"}
    assert cluster.put(f"/inventory/{product}", {"on_hand": 5}, headers=charset).status == 202
    assert cluster.get(f"/inventory/{product}", 1).body["on_hand"] == 5


def test_admin_endpoints_need_the_bearer(cluster: Cluster) -> None:
    product, user, order = uid("p"), uid("u"), uid("o")
    calls = [
        ("PUT", f"/inventory/{product}", {"on_hand": 1}),
        ("POST", f"/inventory/{product}/restock", {"quantity": 1}),
        ("POST", f"/orders/{order}/ship", {"carrier": "UPS", "tracking_number": "1Z"}),
        ("POST", f"/orders/{order}/deliver", None),
        ("POST", "/users", {"user_id": user, "email": "a@example.com"}),
        ("PATCH", f"/users/{user}", {"email": "b@example.com"}),
        ("GET", "/dlq", None),
        ("POST", "/dlq/redrive", {}),
    ]
    for method, path, body in calls:
        for i, url in enumerate(cluster.urls):
            assert http(method, url + path, body).status == 401, (i, method, path)
            wrong = {"Authorization": "Bearer nope"}
            assert http(method, url + path, body, headers=wrong).status == 401, (i, method, path)
    assert cluster.get("/dlq", headers=ADMIN).status == 200


def test_internal_endpoints_are_not_public(cluster: Cluster) -> None:
    user = uid("u")
    for url in cluster.urls:
        for path in ("/_local/orders", "/_local/inventory", "/_local/analytics", "/_local/dlq", "/_local/dashboard"):
            for method in ("GET", "OPTIONS", "DELETE", "POST"):  # no 405 telling the path exists
                assert http(method, url + path).status == 404, (method, path)
        resp = http("POST", url + f"/users/{user}/_create", {"email": "x@example.com", "name": "💩 a b"}, headers=ADMIN)
        assert resp.status == 404
        for method in ("GET", "PUT"):
            assert http(method, url + f"/users/{user}/_create").status == 404, method
    assert cluster.get(f"/users/{user}").status == 404
    assert cluster.get("/orders?limit=5").status == 200  # the peers still reach each other
    data = cluster.get("/dashboard/data").body  # and the dashboard still gathers every worker's samples
    assert not data.get("missing"), data


def test_two_authorization_headers_are_no_token_through_either_worker(cluster: Cluster) -> None:
    # Forwarded to the key's owner, both headers must arrive: the last one alone would be a token.
    body = b'{"on_hand": 5}'
    for n in range(6):
        product = uid("p")
        for url in cluster.urls:
            head = (
                f"PUT /inventory/{product} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer wrong\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
            assert raw_request(url, head) == 401, (n, url)
        assert cluster.get(f"/inventory/{product}").body["on_hand"] == 0


def test_a_transfer_coding_other_than_chunked_is_501(cluster: Cluster) -> None:
    body = b'{"user_id": "u1"}'
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    for coding in ("x-foo, chunked", "gzip, chunked"):
        head = (
            f"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: {coding}\r\nConnection: close\r\n\r\n"
        ).encode()
        assert raw_request(cluster.urls[0], head + chunked) == 501, coding
    plain = "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    assert raw_request(cluster.urls[0], (plain + "Connection: close\r\n\r\n").encode() + chunked) == 422


def test_an_email_a_mail_header_would_read_as_other_recipients_is_422(cluster: Cluster) -> None:
    for email in ("a,b@evil.com", "x<y>@evil.com", "victim:attacker@evil.com", 'a"b@evil.com', "a;b@evil.com"):
        resp = cluster.post("/users", {"user_id": uid("u"), "email": email}, headers=ADMIN)
        assert resp.status == 422, (email, resp)
        order = cluster.post("/orders", {**order_body([(uid("p"), 1, "1.00")]), "user_email": email})
        assert order.status == 422, (email, order)
    assert cluster.post("/users", {"user_id": uid("u"), "email": "o'neil+x@example.org"}, headers=ADMIN).status == 202


def test_long_polls_whose_clients_left_free_their_slots(cluster: Cluster) -> None:
    def long_polls(url: str) -> float:
        lines = http("GET", url + "/metrics").raw.decode().splitlines()
        return sum(float(line.split()[-1]) for line in lines if line.startswith("orderstream_http_long_polls"))

    parts = urlsplit(cluster.urls[0])
    socks = []
    for _ in range(20):  # unknown orders: half of them forwarded to the other worker
        sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
        sock.sendall(f"GET /orders/{uid('o')}?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(sock)
    eventually(lambda: long_polls(cluster.urls[0]) >= 20, 10, what="the polls held")
    for sock in socks:
        sock.close()
    for url in cluster.urls:
        eventually(lambda url=url: long_polls(url) == 0, 10, what=f"the slots of {url} freed")


def test_customer_reads_carry_no_payment_token_and_no_email_the_admin_s_do(cluster: Cluster) -> None:
    product, user = uid("p"), uid("u")
    cluster.put(f"/inventory/{product}", {"on_hand": 3}, headers=ADMIN)
    order_id = cluster.place(order_body([(product, 1, "2.00")], user_id=user, email="secret@example.com"))
    assert cluster.final(order_id)["status"] == "confirmed"
    for i in (0, 1):
        for path in (f"/orders/{order_id}", f"/orders/{order_id}/events", f"/orders?user_id={user}"):
            raw = cluster.get(path, i).raw.decode()
            assert "tok_" not in raw and "secret@example.com" not in raw, (path, raw[:500])
    for i in (0, 1):  # the admin's view of the same data carries them (SPEC §4)
        for path in (f"/orders/{order_id}", f"/orders/{order_id}/events", f"/orders?user_id={user}"):
            admin = cluster.get(path, i, headers=ADMIN).raw.decode()
            assert "tok_" in admin and "secret@example.com" in admin, (path, admin[:500])
    view = cluster.get(f"/orders/{order_id}", headers=ADMIN).body
    assert view["user_email"] == "secret@example.com" and view["payment"]["token"].startswith("tok_"), view


def test_the_directory_shows_a_user_s_email_only_to_the_admin(cluster: Cluster) -> None:
    user = uid("u")
    assert (
        cluster.post("/users", {"user_id": user, "email": "hidden@example.com", "name": "A"}, headers=ADMIN).status
        == 202
    )
    for i in (0, 1):  # one worker owns the user, the other forwards
        body = eventually(
            lambda i=i: (lambda r: r.body if r.status == 200 else None)(cluster.get(f"/users/{user}", i)), 20
        )
        assert body["user_id"] == user and "hidden@example.com" not in json.dumps(body), body
        assert cluster.get(f"/users/{user}", i, headers=ADMIN).body["email"] == "hidden@example.com"


def test_an_idempotency_key_reused_with_another_body_is_422(cluster: Cluster) -> None:
    product, user, key = uid("p"), uid("u"), uid("k")
    cluster.put(f"/inventory/{product}", {"on_hand": 5}, headers=ADMIN)
    first = cluster.post("/orders", order_body([(product, 1, "2.00")], user_id=user), headers={"Idempotency-Key": key})
    assert first.status == 202
    order_id = first.body["order_id"]
    cluster.final(order_id)
    for i in (0, 1):
        same = cluster.post(
            "/orders", order_body([(product, 1, "2.00")], user_id=user), i, headers={"Idempotency-Key": key}
        )
        assert (same.status, same.body["order_id"]) == (202, order_id)
        other = cluster.post(
            "/orders", order_body([(product, 2, "2.00")], user_id=user), i, headers={"Idempotency-Key": key}
        )
        assert other.status == 422, other
        assert other.body["error"] == "idempotency_key_reused"
    assert len(cluster.get(f"/orders?user_id={user}").body["orders"]) == 1
    eventually(lambda: cluster.get(f"/inventory/{product}").body["sold"] == 1, 20, what="one unit sold")


def test_one_idempotency_key_sent_at_once_with_different_bodies_places_one_of_them(cluster: Cluster) -> None:
    product, user, key = uid("p"), uid("u"), uid("k")
    cluster.put(f"/inventory/{product}", {"on_hand": 100}, headers=ADMIN)

    def place(quantity: int) -> tuple[int, dict[str, object]]:
        resp = cluster.post(
            "/orders",
            order_body([(product, quantity, "2.00")], user_id=user),
            quantity % 2,
            headers={"Idempotency-Key": key},
        )
        return resp.status, resp.body

    with ThreadPoolExecutor(8) as pool:
        answers = dict(zip(range(1, 9), pool.map(place, range(1, 9)), strict=True))
    placed = [q for q, (status, _) in answers.items() if status == 202]
    assert len(placed) == 1, answers
    assert all(body["error"] == "idempotency_key_reused" for status, body in answers.values() if status != 202)
    order = cluster.final(str(answers[placed[0]][1]["order_id"]))
    assert order["items"][0]["quantity"] == placed[0]
    # Straight after a 202, before the order is handled, another body is refused too.
    key2 = uid("k")
    first = cluster.post(
        "/orders", order_body([(product, 1, "2.00")], user_id=user), 0, headers={"Idempotency-Key": key2}
    )
    again = cluster.post(
        "/orders", order_body([(product, 3, "2.00")], user_id=user), 1, headers={"Idempotency-Key": key2}
    )
    assert (first.status, again.status) == (202, 422), (first, again)


def test_an_order_is_there_straight_after_its_202_on_either_worker(cluster: Cluster) -> None:
    product, user = uid("p"), uid("u")
    cluster.put(f"/inventory/{product}", {"on_hand": 100}, headers=ADMIN)
    for n in range(8):
        placed = cluster.post("/orders", order_body([(product, 1, "2.00")], user_id=user), n % 2)
        assert placed.status == 202, placed
        location, other = placed.headers["Location"], (n + 1) % 2
        read = cluster.get(location, other)
        assert read.status == 200 and read.body["order_id"] == placed.body["order_id"], read
        events = cluster.get(location + "/events", n % 2)
        assert events.status == 200 and events.body["events"][0]["type"] == "order.placed", events
    # A card whose charge never answers: the order cannot be paid before the cancel lands (it
    # could with a good card, and the cancel was then a 409).
    placed = cluster.post("/orders", order_body([(product, 1, "2.00")], user_id=user, card=HANGING_CARD), 0)
    cancelled = cluster.post(placed.headers["Location"] + "/cancel", None, 1)
    assert cancelled.status == 202, cancelled
    assert cluster.final(placed.body["order_id"])["status"] == "cancelled"
    # An order that does not exist is still a 404, at once once its partition is caught up.
    started = time.monotonic()
    assert cluster.get(f"/orders/{uid('o')}", 1).status == 404
    assert time.monotonic() - started < 2.0


def test_reads_of_new_and_unknown_orders_answer_at_once_under_load(cluster: Cluster) -> None:
    import threading

    product, user = uid("p"), uid("u")
    cluster.put(f"/inventory/{product}", {"on_hand": 1_000_000}, headers=ADMIN)
    stop = threading.Event()
    placed_by_load: list[int] = []

    def load(i: int) -> None:  # orders flowing all the time: a partition is never idle
        while not stop.is_set():
            cluster.post("/orders", order_body([(product, 1, "2.00")], user_id=user), i)
            placed_by_load.append(1)

    loaders = [threading.Thread(target=load, args=(i % 2,)) for i in range(4)]
    for t in loaders:
        t.start()
    try:
        eventually(lambda: len(placed_by_load) >= 40, 30, what="the load running")
        for n in range(6):
            started = time.monotonic()
            assert cluster.get(f"/orders/{uid('o')}", n % 2).status == 404
            placed = cluster.post("/orders", order_body([(product, 1, "2.00")], user_id=user), n % 2)
            assert cluster.get(placed.headers["Location"], (n + 1) % 2).status == 200
            assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        for t in loaders:
            t.join()


def test_a_command_with_a_malformed_json_body_is_400_and_one_with_fields_422(cluster: Cluster) -> None:
    product = uid("p")
    cluster.put(f"/inventory/{product}", {"on_hand": 5}, headers=ADMIN)
    order_id = cluster.place(order_body([(product, 1, "2.00")], user_id=uid("u")))
    for kind in ("cancel", "deliver"):
        resp = http("POST", f"{cluster.urls[0]}/orders/{order_id}/{kind}", raw=b"{{{", headers=ADMIN)
        assert resp.status == 400 and resp.body["error"] == "bad_json", (kind, resp)
        # A field the command does not take is a 422, not dropped; so is a body that is not an object.
        # JSON null too: it is a body, not the absence of one (a probe's null cancelled the order).
        for body, field in (
            (b'{"motive": "fraud"}', "motive"),
            (b'["x"]', "body"),
            (b'"x"', "body"),
            (b"null", "body"),
        ):
            resp = http("POST", f"{cluster.urls[1]}/orders/{order_id}/{kind}", raw=body, headers=ADMIN)
            assert resp.status == 422 and resp.body["details"][0]["field"] == field, (kind, body, resp)
    assert cluster.get(f"/orders/{order_id}").body["status"] != "cancelled"
    resp = http("POST", f"{cluster.urls[1]}/orders/{order_id}/cancel", raw=b'{"reason": "   "}')
    assert resp.status == 422 and resp.body["details"][0]["field"] == "reason", resp  # blank


def test_a_restock_past_the_bound_on_hand_is_409(cluster: Cluster) -> None:
    product = uid("p")
    cluster.put(f"/inventory/{product}", {"on_hand": 10}, headers=ADMIN)
    assert cluster.post(f"/inventory/{product}/restock", {"quantity": 1_000_000_000}, 1, headers=ADMIN).status == 409
    assert cluster.post(f"/inventory/{product}/restock", {"quantity": 999_999_990}, 0, headers=ADMIN).status == 202
    assert cluster.get(f"/inventory/{product}").body["on_hand"] == 1_000_000_000


def test_forwarding_keeps_the_encoded_path(cluster: Cluster) -> None:
    for url in cluster.urls:
        started = time.monotonic()
        resp = http("GET", url + "/orders/a%3Fwait%3Dnan", timeout=10)
        assert resp.status == 404, resp
        assert "a?wait=nan" in resp.body["message"]
        assert time.monotonic() - started < 2.0
        slashed = http("GET", url + "/orders/a%2Fb", timeout=10)
        assert slashed.status == 404, slashed
    assert cluster.get("/health").status == 200


def test_the_openapi_document_is_served(cluster: Cluster) -> None:
    for url in cluster.urls:
        doc = http("GET", url + "/openapi.json").body
        assert doc["openapi"].startswith("3.1")
        assert "/orders" in doc["paths"] and "/_local/orders" not in doc["paths"]


def test_forwarded_long_polls_do_not_starve_worker_to_worker_calls(cluster: Cluster) -> None:
    import asyncio

    import aiohttp

    async def run() -> tuple[list[int], float, int]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as client:

            async def poll(i: int) -> int:
                async with client.get(f"{cluster.urls[i % 2]}/orders/{uid('o')}?wait=4") as resp:
                    return resp.status

            async def held() -> int:
                """Long-polls the two workers hold (a forwarded one counts on both)."""
                total = 0
                for url in cluster.urls:
                    async with client.get(f"{url}/metrics") as resp:
                        text = await resp.text()
                    total += sum(
                        int(float(line.rsplit(" ", 1)[1]))
                        for line in text.splitlines()
                        if line.startswith("orderstream_http_long_polls ")
                    )
                return total

            polls = [asyncio.create_task(poll(i)) for i in range(400)]
            # Wait until every long-poll is held (about half of them forwarded): the count has
            # reached 400 and stopped growing.
            deadline, last = time.monotonic() + 3.0, -1
            while (now := await held()) < 400 or now != last:
                assert time.monotonic() < deadline, f"{now} long-polls held after 3 s, 400 sent"
                last = now
                await asyncio.sleep(0.1)
            started = time.monotonic()
            async with client.get(f"{cluster.urls[0]}/orders?limit=5") as resp:
                listed = resp.status
            took = time.monotonic() - started
            return list(await asyncio.gather(*polls)), took, listed

    statuses, took, listed = asyncio.run(run())
    assert listed == 200
    assert took < 2.0, f"a list took {took:.1f} s behind 400 long-polls"
    assert set(statuses) == {404}


def test_requests_the_http_parser_refuses_get_a_json_400_and_the_worker_goes_on(cluster: Cluster) -> None:
    parts = urlsplit(cluster.urls[1])
    heads = [
        b"GET /orders\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    ]
    for head in heads:
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
            sock.sendall(head)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert status_line.split()[1] == b"400", answer[:200]
        assert b"content-type: application/json" in headers.lower(), headers
        assert set(json.loads(body)) == {"error", "message", "details"}, body
    assert http("GET", cluster.urls[1] + "/health", timeout=5).status == 200


def test_a_flood_of_silent_connections_is_refused_and_closed_and_the_worker_goes_on(
    broker_url: str, tmp_path: Path
) -> None:
    """Connections that never send a request head cannot take the worker's file descriptors.

    One worker limited to 512 open files (so at most 128 connections) gets 600 connections,
    each half a header line and then silence: past the limit they are answered 503 at once,
    the silent ones are closed after the head timeout, and the worker, which needs
    descriptors for RocksDB and the broker all along, stays ready and completes an order.
    """
    worker = Worker(app_id=uid("os"), broker=broker_url, datadir=tmp_path / "w", nofile=512).start()
    socks: list[socket.socket] = []
    try:
        worker.wait_ready()
        parts = urlsplit(worker.url)
        refused = 0
        for _ in range(600):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(sock)
        for sock in socks:  # a refused one is answered and closed at once; an accepted one waits
            sock.settimeout(0.05)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            if answer.startswith(b"HTTP/1.1 503") and b'"unavailable"' in answer:
                refused += 1
        assert refused >= 600 - 128 - 8, refused

        def closed(sock: socket.socket) -> bool:
            sock.settimeout(0.05)
            try:
                while sock.recv(65536):  # a refusal's answer first, then the end
                    pass
            except TimeoutError:
                return False
            except OSError:
                pass  # reset: closed as well
            return True

        eventually(lambda: all(closed(s) for s in socks), 30, 0.5, what="silent connections closed")
        assert worker.ready()
        pid = uid("p")
        cluster = Cluster([worker])
        cluster.set_stock(pid, 5)
        order_id = cluster.place(order_body([(pid, 1, "10.00")]))
        assert cluster.final(order_id)["status"] == "confirmed"
        assert "Too many open files" not in worker.log_text()
    finally:
        for sock in socks:
            sock.close()
        worker.stop()


def test_restocks_sent_at_once_past_the_bound_are_409_not_202_for_nothing(cluster: Cluster) -> None:
    """Each restock passes the edge's check alone; together they pass the bound, and the stage
    refuses the late ones: those are answered 409, so every 202 is a restock that happened."""
    product = uid("p")
    assert cluster.put(f"/inventory/{product}", {"on_hand": 999_999_990}, headers=ADMIN).status == 202
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda i: cluster.post(f"/inventory/{product}/restock", {"quantity": 4}, i % 2, headers=ADMIN),
                range(6),
            )
        )
    statuses = sorted(a.status for a in answers)
    assert set(statuses) <= {202, 409}, answers
    assert statuses.count(202) == 2, answers  # 999,999,990 + 4 + 4; a third would pass 10^9
    conflict = next(a for a in answers if a.status == 409)
    assert conflict.body["error"] == "conflict", conflict
    assert cluster.get(f"/inventory/{product}").body["on_hand"] == 999_999_998
    # Their dead letters say they were answered 409, and no redrive makes them happen after all.
    assert cluster.put(f"/inventory/{product}", {"on_hand": 0}, headers=ADMIN).status == 202

    def refused() -> list[dict[str, Any]]:
        page = cluster.get("/dlq?limit=500", headers=ADMIN).body["messages"]
        return [m for m in page if (m.get("original") or {}).get("entity_id") == product]

    letters = eventually(lambda: len(refused()) == 4 and refused(), 30, what="4 dead letters")
    assert all(m["answered"] == 409 for m in letters), letters
    redriven = cluster.post("/dlq/redrive", {"ids": [m["id"] for m in letters]}, headers=ADMIN)
    assert redriven.status == 202 and redriven.body["redriven"] == 0, redriven
    assert cluster.post("/dlq/redrive", {}, headers=ADMIN).status == 202  # "all" leaves them too
    eventually(lambda: cluster.get(f"/inventory/{product}").body["on_hand"] == 0, 10)
    assert {m["status"] for m in refused()} == {"dead"}
    assert cluster.get(f"/inventory/{product}").body["on_hand"] == 0


def test_ships_sent_at_once_ship_once_and_the_others_are_409(cluster: Cluster) -> None:
    product = uid("p")
    cluster.put(f"/inventory/{product}", {"on_hand": 5}, headers=ADMIN)
    order_id = cluster.place(order_body([(product, 1, "2.00")], user_id=uid("u")))
    assert cluster.final(order_id)["status"] == "confirmed"

    def ship(i: int) -> Any:
        body = {"carrier": f"carrier-{i}", "tracking_number": f"T{i}"}
        return cluster.post(f"/orders/{order_id}/ship", body, i % 2, headers=ADMIN)

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(ship, range(5)))
    accepted = [i for i, a in enumerate(answers) if a.status == 202]
    assert len(accepted) == 1 and all(a.status in (202, 409) for a in answers), answers
    events = cluster.get(f"/orders/{order_id}/events", headers=ADMIN).body["events"]
    shipped = [e for e in events if e["type"] == "order.shipped"]
    assert len(shipped) == 1 and shipped[0]["payload"]["carrier"] == f"carrier-{accepted[0]}", shipped


def test_a_client_s_forwarded_header_changes_nothing(cluster: Cluster) -> None:
    """``X-Orderstream-Forwarded`` means something only from a peer (with the internal token)."""
    product = uid("p")
    cluster.put(f"/inventory/{product}", {"on_hand": 5}, headers=ADMIN)
    order_id = cluster.place(order_body([(product, 1, "2.00")], user_id=uid("u")))
    for i in range(2):  # one of the two does not own the order: it forwards as usual
        resp = cluster.get(f"/orders/{order_id}", i, headers={"X-Orderstream-Forwarded": "http://evil:1"})
        assert resp.status == 200, (i, resp)


def test_customer_events_carry_no_idempotency_key_or_request_digest(cluster: Cluster) -> None:
    product = uid("p")
    cluster.put(f"/inventory/{product}", {"on_hand": 5}, headers=ADMIN)
    order_id = cluster.place(order_body([(product, 1, "2.00")], user_id=uid("u")), key=uid("k"))
    customer = cluster.get(f"/orders/{order_id}/events").body["events"]
    placed = next(e for e in customer if e["type"] == "order.placed")
    assert not {"idempotency_key", "request_hash"} & set(placed.get("metadata") or {}), placed
    admin = cluster.get(f"/orders/{order_id}/events", headers=ADMIN).body["events"]
    assert "idempotency_key" in next(e for e in admin if e["type"] == "order.placed")["metadata"]


def test_two_idempotency_key_headers_are_422(cluster: Cluster) -> None:
    body = json.dumps(order_body([(uid("p"), 1, "2.00")], user_id=uid("u"))).encode()
    head = (
        b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Idempotency-Key: one\r\nIdempotency-Key: two\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for url in cluster.urls:
        assert raw_request(url, head + body) == 422


def test_a_query_parameter_given_twice_is_422(cluster: Cluster) -> None:
    for path in ("/orders?limit=1&limit=500", "/inventory?limit=2&limit=3", "/orders/x?wait=1&wait=2"):
        resp = cluster.get(path)
        assert resp.status == 422, (path, resp)
        assert resp.body["details"][0]["message"] == "given more than once", resp


def test_a_query_parameter_an_endpoint_does_not_take_is_422_and_changes_nothing(cluster: Cluster) -> None:
    product = uid("p")
    assert http("PUT", f"{cluster.urls[0]}/inventory/{product}", {"on_hand": 3}, headers=ADMIN).status == 202
    eventually(lambda: cluster.get(f"/inventory/{product}").body["on_hand"] == 3)
    writes = [
        ("POST", "/dlq/redrive?source_topic=orders", {}),
        ("PUT", f"/inventory/{product}?on_hand=9", {"on_hand": 5}),
        ("POST", f"/inventory/{product}/restock?dry_run=1", {"quantity": 1}),
    ]
    for method, path, body in writes:
        resp = http(method, cluster.urls[1] + path, body, headers=ADMIN)
        assert resp.status == 422, (path, resp)
        assert resp.body["details"][0]["message"] == "this endpoint takes no such query parameter", resp
    reads = (f"/inventory/{product}?x=1", "/orders/x/events?limit=1", "/analytics/summary?window=5", "/cluster?a=b")
    for path in reads:
        assert cluster.get(path).status == 422, path
    for path in ("/health?probe=1", "/ready?probe=1", "/metrics?name=x", "/openapi.json?v=1"):
        assert cluster.get(path).status in (200, 503), path
    assert cluster.get(f"/inventory/{product}").body["on_hand"] == 3
    assert http("POST", cluster.urls[0] + "/dlq/redrive?source_topic=x", {}).status == 401  # the token first


def test_an_integer_past_64_bits_is_422_on_its_field_and_not_json_stays_400(cluster: Cluster) -> None:
    product = uid("p")
    url = f"{cluster.urls[0]}/inventory/{product}"
    huge = "9" * 400
    resp = http("PUT", url, raw=f'{{"on_hand": {huge}}}'.encode(), headers=ADMIN)
    assert resp.status == 422 and resp.body["details"][0]["field"] == "on_hand", resp
    body = json.dumps(order_body([(product, 1, "1.00")])).replace('"quantity": 1', f'"quantity": -{huge}')
    resp = http("POST", cluster.urls[1] + "/orders", raw=body.encode())
    assert resp.status == 422 and resp.body["details"][0]["field"] == "items[0].quantity", resp
    for raw in (f'{{"on_hand": {huge}, "x": NaN}}', f'{{"on_hand": {huge}, "x": "\\ud800"}}', f'{{"on_hand": {huge}'):
        resp = http("PUT", url, raw=raw.encode(), headers=ADMIN)
        assert resp.status == 400 and resp.body["error"] == "bad_json", (raw[-20:], resp)


def test_creates_of_one_user_sent_at_once_create_it_once_and_the_others_are_409(cluster: Cluster) -> None:
    user = uid("u")

    def create(n: int) -> tuple[int, str]:
        resp = http(
            "POST", cluster.urls[n % 2] + "/users", {"user_id": user, "email": f"a{n}@example.com"}, headers=ADMIN
        )
        return resp.status, f"a{n}@example.com"

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(create, range(10)))
    accepted = [email for status, email in answers if status == 202]
    assert len(accepted) == 1 and sorted(s for s, _ in answers).count(409) == 9, answers
    profile = cluster.get(f"/users/{user}", headers=ADMIN).body
    assert profile["email"] == accepted[0], (profile, accepted)


def test_an_error_message_shows_invisible_characters_of_an_id_as_escapes(cluster: Cluster) -> None:
    resp = cluster.get("/orders/x%E2%80%AEy")
    assert resp.status == 404, resp
    assert "\u202e" not in resp.raw.decode() and "\\u202e" in resp.body["message"], resp


def test_an_absolute_form_target_is_answered_by_either_worker(cluster: Cluster) -> None:
    # ``GET http://host/orders/x HTTP/1.1`` (RFC 9112 §3.2.2): the worker that does not own the
    # order forwarded the whole URL glued to the owner's, and answered 500 (probe 15).
    order_id = cluster.place(order_body([(uid("p"), 1, "1.00")]))  # no stock: rejected, final
    assert cluster.final(order_id)["status"] == "rejected"
    for scheme in ("http", "https", "ftp"):
        for url in cluster.urls:
            head = f"GET {scheme}://x/orders/{order_id}?wait=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            assert raw_request(url, head.encode()) == 200, (scheme, url)
            cancel = (
                f"POST {scheme}://x/orders/{order_id}/cancel HTTP/1.1\r\nHost: x\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            assert raw_request(url, cancel.encode()) == 409, (scheme, url)


def test_a_body_naming_a_member_twice_is_400_and_places_nothing(cluster: Cluster) -> None:
    # orjson takes the last of two "user_id"s, many proxies the first: one body, two meanings (probe 15).
    user_a, user_b = uid("u"), uid("u")
    body = json.dumps(order_body([(uid("p"), 1, "1.00")], user_id=user_a))
    twice = body.replace(f'"user_id": "{user_a}"', f'"user_id": "{user_a}", "user_id": "{user_b}"')
    assert twice != body
    for url in cluster.urls:
        resp = http("POST", url + "/orders", raw=twice.encode())
        assert resp.status == 400 and resp.body["error"] == "bad_json" and "user_id" in resp.body["message"], resp
        nested = http("PUT", url + f"/inventory/{uid('p')}", raw=b'{"on_hand": 1, "on_hand": 9}', headers=ADMIN)
        assert nested.status == 400, nested
        # Nested past what the standard library's parser checks (orjson reads 1,024 levels): the
        # duplicate hid behind it and the order was placed for user_b (probe 17).
        deep = twice.replace(f'"user_id": "{user_a}"', '"user_id": ' + "[" * 1000 + "]" * 1000)
        resp = http("POST", url + "/orders", raw=deep.encode())
        assert resp.status == 400 and resp.body["error"] == "bad_json", resp
    for user in (user_a, user_b):
        assert cluster.get(f"/orders?user_id={user}").body["orders"] == []
    assert http("POST", cluster.urls[0] + "/orders", raw=body.encode()).status == 202  # the same body, once each


def test_stock_reads_of_an_id_no_product_can_have_are_422_not_zeros(cluster: Cluster) -> None:
    """``PUT`` refused these ids while ``GET`` answered 200 with zeros for them (probe 21)."""
    for bad in ("%C3%A9", "a%20b", "x" * 129, "%2E%2E%2F_local"):
        resp = cluster.get(f"/inventory/{bad}")
        assert resp.status == 422 and resp.body["error"] == "invalid", (bad, resp)
    never = uid("p")
    assert cluster.get(f"/inventory/{never}").body == {
        "product_id": never,
        "on_hand": 0,
        "reserved": 0,
        "sold": 0,
        "available": 0,
    }
