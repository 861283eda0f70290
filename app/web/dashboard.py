"""The live dashboard at ``/`` (placeholder until the full page lands)."""

from __future__ import annotations

from aiohttp import web


async def index(request: web.Request) -> web.Response:
    """Serve the dashboard page."""
    return web.Response(text="<h1>orderstream</h1>", content_type="text/html")


def register(web_app: web.Application) -> None:
    """Add the dashboard route."""
    web_app.router.add_get("/", index)
