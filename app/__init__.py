"""orderstream: event-driven order processing on Faust and Kafka.

``faust -A app worker`` finds the Faust app as ``app.app``. Importing the package
builds the app from the settings, then registers the agents and the web routes.
"""

# Registration imports; `from ... import` so the name `app` keeps meaning the Faust app.
from agents import orders as _orders  # noqa: F401
from app import web as _web  # noqa: F401
from app.main import app, settings

__all__ = ["app", "settings"]
