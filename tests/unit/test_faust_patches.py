"""The patches to faust's internals: each one runs, and an untested version refuses to start."""

from __future__ import annotations

from typing import Any

import pytest

from app import faust_patches
from tests.support import eventually_async


async def _serve(app: Any) -> tuple[Any, int]:
    """Serve ``app`` (a real aiohttp server, as faust's web driver runs one) on a free port."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _serve_empty_json() -> tuple[Any, int]:
    """Serve ``GET /`` answering ``{}`` (see :func:`_serve`)."""
    from aiohttp import web

    async def root(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/", root)
    return await _serve(app)


def test_every_patch_runs_on_the_tested_versions() -> None:
    from faust.cli.base import cli

    from app.main import settings

    faust_patches.install(settings)
    assert "worker flags" in faust_patches.installed
    options = {opt for param in cli.commands["worker"].params for opt in getattr(param, "opts", [])}
    assert {"--broker", "--orderstream-payment-timeout"} <= options
    assert "-b" in options  # faust's own --web-bind keeps its short name


def test_the_json_banner_hook_replaces_faust_s() -> None:
    from faust.cli import worker as worker_cli

    from app import startup
    from app.main import settings

    before = worker_cli.worker.on_worker_created
    try:
        assert startup.quiet_banner_for_json(settings.__class__(**{**settings.__dict__, "log_format": "json"}))
        assert worker_cli.worker.on_worker_created is not before
    finally:
        worker_cli.worker.on_worker_created = before  # type: ignore[method-assign]


@pytest.mark.parametrize(("name", "have"), [("faust-streaming", "0.16.0"), ("aiokafka", "0.13.1")])
def test_an_untested_version_refuses_with_one_sentence(name: str, have: str) -> None:
    with pytest.raises(faust_patches.UntestedVersion) as caught:
        faust_patches.check_versions({name: have})
    text = str(caught.value)
    assert f"{name} {have} is installed" in text and text.count(". ") == 0


def test_the_installed_versions_are_the_tested_ones() -> None:
    faust_patches.check_versions()


def test_a_request_the_http_parser_refuses_gets_the_json_error_shape() -> None:
    """A real aiohttp server and raw sockets: the parser's own 400s are JSON, nothing echoed."""
    import asyncio

    import orjson

    from app.main import settings

    faust_patches.install(settings)
    assert "json parser errors" in faust_patches.installed

    async def answers() -> list[tuple[int, bytes, bytes]]:
        runner, port = await _serve_empty_json()
        heads = [
            b"GET /\x00<script> HTTP/1.1\r\nHost: x\r\n\r\n",  # a malformed request line
            # Malformed methods, not unknown ones (probe 26: they were 501s): no space after it,
            # a leading space, a byte no token has.
            b"GET\r\n\r\n",
            b" GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",  # no brotli here
            b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n",  # a method no one implements: 501, as RFC 9110 says
        ]
        out = []
        try:
            for head in heads:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                await writer.drain()
                raw = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                status_line, _, rest = raw.partition(b"\r\n")
                headers, _, body = rest.partition(b"\r\n\r\n")
                out.append((int(status_line.split()[1]), headers.lower(), body))
        finally:
            await runner.cleanup()
        return out

    *refused, brotli, unknown_method = asyncio.run(answers())
    assert brotli[0] == 415 and orjson.loads(brotli[2])["error"] == "unsupported_encoding", brotli
    assert [status for status, _, _ in refused[1:4]] == [400, 400, 400], refused[1:4]
    for status, headers, body in refused:
        assert 400 <= status < 500, (status, body)
        assert b"content-type: application/json" in headers, headers
        doc = orjson.loads(body)
        assert set(doc) == {"error", "message", "details"} and doc["error"], doc
        assert b"script" not in body and b"aaaa" not in body
    status, headers, body = unknown_method
    assert status == 501 and orjson.loads(body)["error"] == "not_implemented", (status, body)


def test_the_web_server_closes_silent_connections_and_refuses_past_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real aiohttp server and raw sockets: a connection without a request head is closed after
    the head timeout, and past the connection limit a new one gets a JSON 503 at once."""
    import asyncio

    import orjson
    from aiohttp import web_protocol

    from app.faust_patches import connections
    from app.main import settings

    faust_patches.install(settings)
    assert "connection limits" in faust_patches.installed
    monkeypatch.setattr(connections, "HEAD_TIMEOUT", 0.5)
    monkeypatch.setattr(web_protocol.RequestHandler.connection_made, "limit", 3)

    async def run() -> None:
        runner, port = await _serve_empty_json()
        try:
            silent = []
            for _ in range(3):  # half a head each: the limit is reached
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                silent.append((reader, writer))
            await eventually_async(lambda: len(runner.server._connections) >= 3, what="three open connections")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)
            assert raw.startswith(b"HTTP/1.1 503"), raw
            doc = orjson.loads(raw.partition(b"\r\n\r\n")[2])
            assert doc["error"] == "unavailable", doc
            for reader, _ in silent:  # closed by the head timeout: EOF, no answer
                assert await asyncio.wait_for(reader.read(), 5) == b""
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # room again
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)
            assert raw.startswith(b"HTTP/1.1 200"), raw
        finally:
            await runner.cleanup()

    asyncio.run(run())
    assert connections.counts["refused"] >= 1 and connections.counts["head_timeout"] >= 3


def test_past_the_limit_the_oldest_idle_keep_alive_connection_makes_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 25: one client holding idle keep-alive connections filled the cap, and every other
    caller, the other workers included, was refused: lists, analytics and this worker's keys
    answered 503 through every worker. Past the limit the oldest idle one is closed instead."""
    import asyncio

    from aiohttp import web_protocol

    from app.faust_patches import connections
    from app.main import settings

    faust_patches.install(settings)
    monkeypatch.setattr(web_protocol.RequestHandler.connection_made, "limit", 3)
    evicted = connections.counts["evicted"]

    async def run() -> None:
        runner, port = await _serve_empty_json()
        try:
            idle = []
            for _ in range(4):  # answered once each, then held open: one past the limit
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200"), head
                await asyncio.wait_for(reader.readexactly(2), 5)  # the body, {}
                idle.append((reader, writer))
            assert await asyncio.wait_for(idle[0][0].read(), 5) == b""  # the oldest was closed for it
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # and a caller after them
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)
            assert raw.startswith(b"HTTP/1.1 200"), raw
            writer2 = idle[-1][1]  # the newest is still served
            writer2.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(idle[-1][0].read(), 5)).startswith(b"HTTP/1.1 200")
        finally:
            await runner.cleanup()

    asyncio.run(run())
    assert connections.counts["evicted"] - evicted == 2


def test_the_connection_limit_leaves_most_descriptors_to_the_worker() -> None:
    from app.faust_patches.connections import max_connections

    assert max_connections(1024) == 256
    assert max_connections(100) == 64
    assert max_connections(1_000_000) == 10_000


def test_an_expect_header_is_answered_in_json_and_a_declared_oversized_body_is_refused_first() -> None:
    import asyncio

    import orjson
    from aiohttp import web

    from app.main import settings

    faust_patches.install(settings)
    assert "expect header" in faust_patches.installed

    async def run() -> list[bytes]:
        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"got": len(await request.read())})

        app = web.Application()
        app.router.add_post("/echo", echo)  # created after the patch, as faust's routes are
        runner, port = await _serve(app)
        answers = []
        try:
            for expect, length in (("100-continue", 10**10), ("teapot", 2), ("100-continue", 2)):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    f"Expect: {expect}\r\nContent-Length: {length}\r\n\r\n".encode()
                )
                first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                if first.startswith(b"HTTP/1.1 100"):
                    writer.write(b"{}")  # invited: the body follows
                    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                answers.append(first + await asyncio.wait_for(reader.read(), 5))
                writer.close()
        finally:
            await runner.cleanup()
        return answers

    too_large, unknown, invited = asyncio.run(run())
    assert too_large.startswith(b"HTTP/1.1 413"), too_large
    assert orjson.loads(too_large.partition(b"\r\n\r\n")[2])["error"] == "too_large"
    assert unknown.startswith(b"HTTP/1.1 417"), unknown
    assert orjson.loads(unknown.partition(b"\r\n\r\n")[2])["error"] == "expectation_failed"
    assert invited.startswith(b"HTTP/1.1 200") and b'"got": 2' in invited, invited


def test_faust_s_stall_checks_on_its_own_idle_consumer_never_log_errors() -> None:
    """Faust's consumer holds only its leader topic and never fetches it: its stall checks (an ERROR
    "has not sent fetch request" 5 minutes after start) say nothing about the engine's consumer."""
    import inspect

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from app.main import FAUST_STALL_CHECK_OFF, app

    # The thread takes its fetch-request and stream timeouts from this setting (faust 0.11).
    assert "app.conf.stream_processing_timeout" in inspect.getsource(AIOKafkaConsumerThread)
    assert app.conf.stream_processing_timeout == FAUST_STALL_CHECK_OFF >= 365 * 86_400
