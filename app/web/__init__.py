"""The web layer: API routes and the dashboard, mounted on Faust's web server."""

from __future__ import annotations

from typing import Any

from app.main import app


def _on_webserver_init(web: Any) -> None:
    from app.web import api, dashboard

    api.register(web.web_app)
    dashboard.register(web.web_app)


app.on_webserver_init = _on_webserver_init  # type: ignore[method-assign]  # Faust's documented hook
