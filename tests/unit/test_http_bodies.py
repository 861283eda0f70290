"""The HTTP edge's handling of request bodies, over real sockets.

aiohttp's server runs as faust's web driver runs it, with the edge's middleware.

Slow bodies hold no slot of the in-flight cap and get a 408; a body that does not decode
per its ``Content-Encoding`` is a 400; a client that leaves mid-body is recorded as 499,
not as a server error; a 405 names the allowed methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from app import metrics
from app.web import api, guard
from tests.support import eventually_async

Check = Callable[[str, int], Awaitable[None]]

#: The long-polls the test app's ``/orders/{id}`` handler has begun (ids), in order.
POLLING: list[str] = []
#: The running test app's runner (its server's open connections).
RUNNER: list[web.AppRunner] = []


def _serve(monkeypatch: pytest.MonkeyPatch, check: Check) -> None:
    """Run ``check(host, port)`` against an app with the edge's middleware, a cap of 2 and a 0.5 s body timeout."""
    monkeypatch.setattr(api, "BODY_TIMEOUT", 0.5)
    monkeypatch.setattr(guard, "IN_FLIGHT", guard.Gauge("requests in flight", 2))

    async def echo(request: web.Request) -> web.Response:
        body = await api.read_json(request)
        return api.json_response({"keys": sorted(body)})

    async def poll(request: web.Request) -> web.Response:
        POLLING.append(request.match_info["order_id"])
        await asyncio.sleep(float(request.query.get("wait", 0)))  # a long-poll that finds nothing
        return api.json_response({"order_id": request.match_info["order_id"]})

    async def main() -> None:
        app = web.Application(middlewares=[api.errors_middleware], client_max_size=64 * 1024)
        app.router.add_post("/echo", echo)
        app.router.add_get("/only-get", echo)
        app.router.add_get("/orders/{order_id}", poll)  # HEAD too, as aiohttp adds it to a GET route
        runner = web.AppRunner(app, access_log=None)  # as faust's web driver runs it
        await runner.setup()
        RUNNER[:] = [runner]
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            await check("127.0.0.1", port)
        finally:
            await runner.cleanup()

    asyncio.run(main())


async def _request(host: str, port: int, head: str, body: bytes = b"", *, close: bool = False) -> tuple[int, str]:
    """Send raw bytes; return the status and the whole answer (``(0, "")`` when ``close``)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    if close:
        writer.close()
        return 0, ""
    answer = (await asyncio.wait_for(reader.read(65536), 5)).decode(errors="replace")
    writer.close()
    return int(answer.split(" ", 2)[1]), answer


def _post(path: str, length: int, extra: str = "") -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n{extra}"
    )


def test_slow_bodies_hold_no_slot_and_get_a_408(monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(host: str, port: int) -> None:
        # Five clients send one byte of a 100-byte body and stall (the cap is 2).
        slow = [asyncio.create_task(_request(host, port, _post("/echo", 100), b"{")) for _ in range(5)]
        # Every one connected (they stall for the whole BODY_TIMEOUT, 0.5 s) before the normal one.
        server: Any = RUNNER[0].server
        await eventually_async(lambda: len(server._connections) >= 5, 0.4, what="the five slow clients connected")
        status, answer = await _request(host, port, _post("/echo", 8), b'{"a": 1}')
        assert status == 200, answer
        assert not any(t.done() for t in slow)  # still stalled while a normal request is served
        for status, answer in await asyncio.gather(*slow):
            assert status == 408, answer
            assert '"error":"timeout"' in answer

    _serve(monkeypatch, check)


def test_a_body_that_does_not_decode_per_its_encoding_is_a_400(monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(host: str, port: int) -> None:
        for encoding in ("gzip", "deflate"):
            status, answer = await _request(
                host, port, _post("/echo", 13, f"Content-Encoding: {encoding}\r\n"), b"notcompressed"
            )
            assert status == 400, answer
            assert '"error":"bad_encoding"' in answer

    _serve(monkeypatch, check)


def test_a_bad_encoding_on_a_keep_alive_connection_closes_it_and_logs_no_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp drains what is left of a keep-alive request's body, meets the decoder's error again
    and logs a traceback per request: the 400 closes the connection instead."""

    async def check(host: str, port: int) -> None:
        head = _post("/echo", 13, "Content-Encoding: gzip\r\n").replace("Connection: close", "Connection: keep-alive")
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head.encode() + b"\r\n" + b"notcompressed")
        answer = (await asyncio.wait_for(reader.read(), 5)).decode(errors="replace")  # to the end: closed
        writer.close()
        assert answer.startswith("HTTP/1.1 400") and '"error":"bad_encoding"' in answer, answer
        assert "connection: close" in answer.lower(), answer

    with caplog.at_level(logging.INFO):
        _serve(monkeypatch, check)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_client_that_leaves_mid_body_is_no_server_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def count(status: str) -> float:
        value: Any = metrics.REGISTRY.get_sample_value(
            "orderstream_http_requests_total", {"route": "/echo", "status": status}
        )
        return float(value or 0.0)

    before = {s: count(s) for s in ("499", "500")}

    async def check(host: str, port: int) -> None:
        for _ in range(3):
            await _request(host, port, _post("/echo", 100), b'{"a"', close=True)
        for _ in range(100):  # the server sees the close on its next read
            if count("499") - before["499"] >= 3:
                break
            await asyncio.sleep(0.02)

    with caplog.at_level(logging.INFO):
        _serve(monkeypatch, check)
    assert count("499") - before["499"] == 3
    assert count("500") == before["500"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_405_names_the_allowed_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(host: str, port: int) -> None:
        status, answer = await _request(host, port, _post("/only-get", 2), b"{}")
        assert status == 405, answer
        assert "Allow: GET" in answer and '"error":"method_not_allowed"' in answer

    _serve(monkeypatch, check)


def test_a_body_in_a_coding_the_edge_does_not_decode_is_a_415_not_read_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp passes ``compress`` or ``gzip, gzip`` through undecoded: the plain JSON must not be taken."""

    async def check(host: str, port: int) -> None:
        for coding in ("compress", "x-custom", "gzip, gzip", "deflate, identity"):
            status, answer = await _request(
                host, port, _post("/echo", 8, f"Content-Encoding: {coding}\r\n"), b'{"a": 1}'
            )
            assert status == 415 and '"error":"unsupported_encoding"' in answer, (coding, answer)
        status, answer = await _request(host, port, _post("/echo", 8, "Content-Encoding: Identity\r\n"), b'{"a": 1}')
        assert status == 200, answer

    _serve(monkeypatch, check)


def test_head_long_polls_hold_no_slot_of_the_in_flight_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """HEAD ``?wait=`` polls took a slot each for their whole wait (only GET counted as a long-poll):
    a thousand idle ones refused every other request of the worker 503 (probe 21)."""

    async def check(host: str, port: int) -> None:
        head = "HEAD /orders/o{}?wait=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        POLLING.clear()
        polls = [asyncio.create_task(_request(host, port, head.format(n))) for n in range(3)]  # the cap is 2
        deadline = asyncio.get_running_loop().time() + 5
        while len(POLLING) < 3:  # every poll is waiting in its handler
            assert asyncio.get_running_loop().time() < deadline, POLLING
            await asyncio.sleep(0.01)
        status, answer = await _request(host, port, _post("/echo", 8), b'{"a": 1}')
        assert status == 200, answer
        for status, answer in await asyncio.gather(*polls):
            assert status == 200, answer

    _serve(monkeypatch, check)


def test_a_json_body_declared_in_a_charset_other_than_utf_8_is_a_415(monkeypatch: pytest.MonkeyPatch) -> None:
    """``charset=utf-16`` (or latin-1) was ignored and the body read as UTF-8 (probe 21)."""

    async def check(host: str, port: int) -> None:
        head = _post("/echo", 8).replace("application/json", "application/json; charset={}")
        for charset in ("utf-16", "latin-1", "utf-32"):
            status, answer = await _request(host, port, head.format(charset), b'{"a": 1}')
            assert status == 415 and '"error":"unsupported_media_type"' in answer, (charset, answer)
        for charset in ("utf-8", "UTF-8", '"utf-8"', "us-ascii"):
            status, answer = await _request(host, port, head.format(charset), b'{"a": 1}')
            assert status == 200, (charset, answer)

    _serve(monkeypatch, check)


@pytest.mark.parametrize(
    ("parents", "continued"),
    [
        (["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], True),
        (["00-" + "1" * 32 + "-" + "2" * 16 + "-01"] * 2, False),
    ],
)
def test_one_traceparent_header_is_continued_and_two_are_none(parents: list[str], continued: bool) -> None:
    """Probe 25: with two ``traceparent`` headers the first one was continued; W3C Trace Context
    treats the pair as invalid (the request starts a new trace)."""
    from app import tracing

    async def parent(request: web.Request) -> web.Response:
        return api.json_response({"parent": [v.decode() for _, v in tracing.request_headers()]})

    async def main() -> None:
        app = web.Application(middlewares=[api.errors_middleware])
        app.router.add_get("/parent", parent)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            headers = "".join(f"traceparent: {p}\r\n" for p in parents)
            head = f"GET /parent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}"
            status, answer = await _request("127.0.0.1", runner.addresses[0][1], head)
            assert status == 200, answer
            assert ('"parent":["' + parents[0]) in answer if continued else '"parent":[]' in answer, answer
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_a_request_line_without_a_version_is_a_400_not_http_0_9(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 26: ``GET /health`` and nothing more was answered as HTTP/0.9, headers and data."""

    async def check(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /only-get\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400", answer
        assert b'"error":"bad_request"' in body, answer

    _serve(monkeypatch, check)
