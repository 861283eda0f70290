"""Kafka Streams' checkpoint rule: local state is trusted only when it is provably this changelog's."""

from __future__ import annotations

from app.engine.recovery import verdict
from app.engine.store import LAYOUT

CP = {"cluster": "c1", "topic": "app-s-changelog", "offset": 50, "layout": LAYOUT}


def judge(
    cp: dict[str, object] | None, *, has_records: bool = True, start: int = 0, end: int = 80, topic_id: str = ""
) -> str:
    return verdict(cp, has_records, cluster="c1", topic="app-s-changelog", start=start, end=end, topic_id=topic_id)


def test_a_checkpoint_within_the_changelog_is_kept() -> None:
    assert judge(CP) == ""
    assert judge({**CP, "offset": 80}) == ""  # at the end: nothing to read
    assert judge(None, has_records=False) == ""  # nothing local: restore from the start


def test_another_cluster_is_discarded() -> None:
    assert "cluster" in judge({**CP, "cluster": "c0"})


def test_another_changelog_topic_is_discarded() -> None:
    assert "changelog" in judge({**CP, "topic": "other-s-changelog"})


def test_state_ahead_of_its_changelog_is_discarded() -> None:
    assert "ahead" in judge(CP, end=20)  # recreated topic, or a zombie's writes


def test_state_built_on_records_the_changelog_no_longer_holds_is_discarded() -> None:
    assert "no longer holds" in judge(CP, start=60)


def test_records_without_a_checkpoint_are_discarded() -> None:
    assert "no checkpoint" in judge(None)


def test_another_local_layout_is_discarded() -> None:
    # A database from before the order state moved into the index (no layout: 1) is rebuilt.
    old = {k: v for k, v in CP.items() if k != "layout"}
    assert "layout 1" in judge(old)


def test_a_changelog_created_again_under_its_name_is_discarded() -> None:
    # Offsets start at 0 again: past the checkpoint, only the topic id tells the copies apart.
    assert "created again" in judge({**CP, "topic_id": "id-1"}, topic_id="id-2")
    assert judge({**CP, "topic_id": "id-1"}, topic_id="id-1") == ""
    assert judge(CP, topic_id="id-2") == ""  # written before topic ids were kept: the other checks decide
    assert judge({**CP, "topic_id": "id-1"}) == ""  # a broker without topic ids


def test_another_partition_s_state_is_discarded() -> None:
    """A partition's database under another's name (p4 copied over p7) was trusted when its
    offsets lay within p7's changelog: 101 of 800 orders read 404 (probe 22)."""
    mine = {**CP, "partition": 7}

    def at(partition: int, cp: dict[str, object]) -> str:
        return verdict(cp, True, cluster="c1", topic="app-s-changelog", start=0, end=80, partition=partition)

    assert at(7, mine) == ""
    assert "partition 7 of its changelog, not 4" in at(4, mine)
    assert at(4, CP) == ""  # a checkpoint written before checkpoints named their partition
