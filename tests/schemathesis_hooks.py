"""Schemathesis hooks for the API fuzz (``SCHEMATHESIS_HOOKS=tests.schemathesis_hooks``).

A valid ``?wait=`` long-polls an unknown order for that many seconds (up to 30, as
documented); fuzzing the value domain needs no real waiting, so positive waits are cut
to 0.2 s. Invalid waits (nan, inf, text, out of range) go through unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import schemathesis


@schemathesis.hook
def map_query(ctx: Any, query: Any) -> Any:
    """Shorten valid long-polls."""
    if isinstance(query, dict) and "wait" in query:
        try:
            seconds = float(query["wait"])
        except (TypeError, ValueError):
            return query
        if math.isfinite(seconds) and 0.2 < seconds <= 30:
            query["wait"] = "0.2"
    return query
