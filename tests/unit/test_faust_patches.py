"""The patches to faust's internals: each one runs, and an untested version refuses to start."""

from __future__ import annotations

import pytest

from app import faust_patches


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
    from aiohttp import web

    from app.main import settings

    faust_patches.install(settings)
    assert "json parser errors" in faust_patches.installed

    async def answers() -> list[tuple[int, bytes, bytes]]:
        async def root(_: web.Request) -> web.Response:
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/", root)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        heads = [
            b"GET /\x00<script> HTTP/1.1\r\nHost: x\r\n\r\n",  # a malformed request line
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
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

    for status, headers, body in asyncio.run(answers()):
        assert 400 <= status < 500, (status, body)
        assert b"content-type: application/json" in headers, headers
        doc = orjson.loads(body)
        assert set(doc) == {"error", "message", "details"} and doc["error"], doc
        assert b"script" not in body and b"aaaa" not in body
