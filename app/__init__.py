"""orderstream: event-driven order processing on Faust and Kafka.

``faust -A app worker`` finds the Faust app as ``app.app``. The app is built on first
access of that attribute (settings loaded, agents and web routes registered), so
importing a pure module such as ``app.domain.orders`` builds nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parent.parent)


def __getattr__(name: str) -> Any:
    if name in ("app", "settings"):
        # `faust -A app` imports this package with the working directory on sys.path only
        # for the import itself; the sibling packages must stay importable afterwards.
        if _ROOT not in sys.path:
            sys.path.insert(0, _ROOT)
        import agents as _agents  # noqa: F401  # registers every stage with the engine
        from app import main
        from app import web as _web  # noqa: F401  # registers the HTTP routes

        try:
            from app import rebuild as _rebuild  # noqa: F401  # registers `faust -A app rebuild`
        except ImportError:  # pragma: no cover - the rebuild command is optional
            pass
        return getattr(main, name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")
