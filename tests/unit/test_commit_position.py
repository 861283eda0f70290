"""The commit goes only over processed offsets and what the fetcher passed over on purpose."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from app import faust_fixes
from app.faust_fixes import commit_position


def test_nothing_processed_commits_nothing() -> None:
    assert commit_position(10, [], []) is None


def test_contiguous_processed_offsets_commit_past_the_last() -> None:
    assert commit_position(10, [10, 11, 12], []) == 13


def test_the_message_at_the_committed_offset_holds_the_commit() -> None:
    # faust 0.15 committed 13 here: the message at 10 was never processed.
    assert commit_position(10, [11, 12], []) == 10


def test_a_hole_holds_the_commit_at_the_hole() -> None:
    assert commit_position(10, [10, 11, 14, 15], []) == 12


def test_markers_and_aborted_ranges_are_committed_over() -> None:
    # 10 is a marker, 13..16 an aborted transaction and its marker.
    assert commit_position(10, [11, 12, 17], [(10, 11), (13, 17)]) == 18


def test_a_range_entered_in_the_middle_still_counts() -> None:
    assert commit_position(12, [15], [(10, 15)]) == 16


def test_skipped_ranges_past_the_processed_offsets_are_committed_over_too() -> None:
    assert commit_position(10, [10], [(11, 12)]) == 12


def test_offsets_below_the_committed_one_are_ignored() -> None:
    assert commit_position(10, [8, 9, 10], []) == 11


def test_unknown_committed_offset_starts_at_the_first_processed() -> None:
    assert commit_position(None, [5, 6, 8], []) == 7


class _Batch:
    def __init__(self, offsets: list[int], next_offset: int) -> None:
        self.offsets = offsets
        self.next_offset = next_offset


def _unpack(self: Any) -> Any:
    """A stand-in for aiokafka's unpacking: yields the batches' offsets, moving the fetch offset."""
    for batch in self.batches:
        for offset in batch.offsets:
            if offset >= self.next_fetch_offset:
                self.next_fetch_offset = offset + 1
                yield SimpleNamespace(offset=offset)
        self.next_fetch_offset = batch.next_offset


def test_the_fetcher_records_what_it_passes_over(monkeypatch: Any) -> None:
    monkeypatch.setattr(faust_fixes, "_skipped", {})
    tp = TP("orders-test-skips", 0)
    # A control batch at 20, records 21-22, an aborted batch 23-25 + marker 26, record 27, trailing marker 28.
    records = SimpleNamespace(
        _tp=tp,
        next_fetch_offset=20,
        batches=[_Batch([], 21), _Batch([21, 22], 23), _Batch([], 27), _Batch([27], 28), _Batch([], 29)],
    )
    seen = [r.offset for r in faust_fixes._skips_recorded(_unpack)(records)]
    assert seen == [21, 22, 27]
    assert faust_fixes._skipped[tp] == [(20, 21), (23, 27), (28, 29)]
    assert commit_position(20, seen, faust_fixes._skipped[tp]) == 29
