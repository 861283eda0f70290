"""The web layer: API routes and the dashboard, mounted on Faust's web server."""

from __future__ import annotations

from typing import Any

from app.main import app


def _on_webserver_init(web: Any) -> None:
    # `faust worker` initialises the web server twice (after autodiscovery and again when the
    # server starts); adding the middlewares twice would run and count every request twice.
    if getattr(web, "_orderstream_registered", False):
        return
    web._orderstream_registered = True
    from app.web import api, dashboard

    api.register(web.web_app)
    dashboard.register(web.web_app)


app.on_webserver_init = _on_webserver_init  # type: ignore[method-assign]  # Faust's documented hook
