"""Running the stages' real adapters over a real partition database, one input at a time, without Kafka."""

from __future__ import annotations

from typing import Any

import orjson

from app.engine.step import Step


def run(step: Step, handler: Any, env: dict[str, Any]) -> list[dict[str, Any]]:
    """Handle ``env`` with ``handler`` in ``step`` and return the envelopes it sent (then forget them)."""
    step.begin("test", "t", 0, env)
    handler(step, env)
    out = [orjson.loads(o.value) for o in step.outputs]
    step.outputs.clear()
    return out
