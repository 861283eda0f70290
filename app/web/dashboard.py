"""The live dashboard at ``/``: one self-contained page that polls the JSON API every 2 s.

The page (``static/dashboard.html``) carries its own CSS and JavaScript, loads
nothing from elsewhere and only calls this worker's public endpoints, so it works
offline and behind any proxy. It is read once, at import.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PAGE = (Path(__file__).parent / "static" / "dashboard.html").read_bytes()

# Inline script and style only; fetches to this origin only; nothing else may load.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def index(request: web.Request) -> web.Response:
    """Serve the dashboard page."""
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8", headers=HEADERS)


@web.middleware
async def serve_dashboard_at_root(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer ``GET /`` with the dashboard.

    Faust's production blueprint already owns ``/`` (a bare ``{"status": "OK"}``), and
    aiohttp routes to the first match, so the dashboard takes the path here instead.
    """
    if request.path == "/" and request.method in ("GET", "HEAD"):
        return await index(request)
    return await handler(request)


def register(web_app: web.Application) -> None:
    """Serve the dashboard at ``/``."""
    web_app.middlewares.append(serve_dashboard_at_root)
