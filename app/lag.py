"""Consumer lag per assigned topic partition, sampled into ``orderstream_consumer_lag``.

Lag is the partition's end offset as the consumer last saw it (the last stable offset
under exactly-once, so a transaction's commit marker can count as one) minus this
worker's committed offset (0 before its first commit: it reads from the earliest).
Changelog partitions are left out: they are read only to recover tables. Revoked
partitions' series are removed.
"""

from __future__ import annotations

import logging
from typing import Any

from app import metrics

log = logging.getLogger("orderstream.lag")

#: Seconds between samples (Prometheus scrapes every 5 s in docker/compose.yml).
INTERVAL = 5.0

_reported: set[tuple[str, int]] = set()


def sample(consumer: Any) -> dict[tuple[str, int], int]:
    """Set the lag gauge of every assigned input partition; return what was set."""
    committed_offsets = getattr(consumer, "_committed_offset", {})
    seen: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        if tp.topic.endswith("-changelog"):
            continue
        try:
            end = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - a partition being reassigned has no highwater yet
            continue
        if end is None:
            continue
        # Nothing committed yet: the worker reads from the earliest offset (auto_offset_reset).
        committed = committed_offsets.get(tp) or 0
        lag = max(int(end) - int(committed), 0)
        metrics.set_lag(tp.topic, tp.partition, lag)
        seen[(tp.topic, tp.partition)] = lag
    for topic, partition in _reported - set(seen):
        metrics.forget_lag(topic, partition)
    _reported.clear()
    _reported.update(seen)
    return seen


def install(app: Any) -> None:
    """Sample the lag every ``INTERVAL`` seconds on this worker."""

    async def sample_consumer_lag() -> None:
        try:
            sample(app.consumer)
        except Exception:  # a metric must never stop the worker
            log.debug("consumer lag sample failed", exc_info=True)

    app.timer(interval=INTERVAL, name="orderstream.sample_consumer_lag")(sample_consumer_lag)
