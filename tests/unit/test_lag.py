"""Consumer lag: end offset minus committed offset per assigned input partition."""

from __future__ import annotations

from typing import Any, NamedTuple

from app import lag, metrics


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    def __init__(self, ends: dict[TP, int], committed: dict[TP, int | None]) -> None:
        self.ends, self._committed_offset = ends, committed

    def assignment(self) -> set[Any]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]


def gauge(topic: str, partition: int) -> float | None:
    return metrics.REGISTRY.get_sample_value("orderstream_consumer_lag", {"topic": topic, "partition": str(partition)})


def test_lag_is_end_minus_committed_and_revoked_partitions_disappear() -> None:
    a, b, changelog, fresh = TP("lt.orders", 0), TP("lt.orders", 1), TP("lt-x-changelog", 0), TP("lt.orders", 2)
    consumer = FakeConsumer({a: 120, b: 7, changelog: 50, fresh: 3}, {a: 100, b: 7, changelog: 1, fresh: None})

    assert lag.sample(consumer) == {("lt.orders", 0): 20, ("lt.orders", 1): 0, ("lt.orders", 2): 3}
    assert gauge("lt.orders", 0) == 20 and gauge("lt.orders", 1) == 0
    assert gauge("lt-x-changelog", 0) is None and gauge("lt.orders", 2) == 3

    consumer.ends.pop(a)
    lag.sample(consumer)
    assert gauge("lt.orders", 0) is None and gauge("lt.orders", 1) == 0
