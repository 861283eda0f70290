"""Rebuild the read models (orders, stock, analytics) from the event topics.

    faust -A app rebuild [--compare URL] [--output FILE] [--no-progress]
    python -m app.rebuild [--compare URL] [--output FILE] [--no-progress]

Three parts, dependencies one way (cli → source → fold → app.domain):

- :mod:`app.rebuild.fold`: the pure fold — the orders topic through
  :func:`app.domain.orders.decide`, the inventory topic's commands through
  :mod:`app.domain.inventory`, recorded confirmations through :mod:`app.domain.analytics`;
- :mod:`app.rebuild.source`: reading the topics from the beginning, and the live API for ``--compare``;
- :mod:`app.rebuild.cli`: the one command line. Importing this package registers
  ``faust -A app rebuild`` (``app.__getattr__`` imports it for that).
"""

from app.rebuild import cli  # registers `faust -A app rebuild`
from app.rebuild.cli import main, run
from app.rebuild.fold import SOURCES, Message, Models, compare, fold_order, rebuild
from app.rebuild.source import RebuildError, fetch_live, read_topics, rebuild_from_kafka, topic_names

__all__ = [
    "SOURCES",
    "Message",
    "Models",
    "RebuildError",
    "cli",
    "compare",
    "fetch_live",
    "fold_order",
    "main",
    "read_topics",
    "rebuild",
    "rebuild_from_kafka",
    "run",
    "topic_names",
]
