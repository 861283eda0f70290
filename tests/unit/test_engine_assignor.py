"""Partition numbers to workers: balanced, sticky, every owner published."""

from __future__ import annotations

from app.engine.assignor import balance


def test_a_single_member_gets_everything() -> None:
    assert balance(8, {"a": []}) == {"a": list(range(8))}


def test_members_share_evenly() -> None:
    plan = balance(8, {"a": [], "b": [], "c": []})
    assert sorted(p for ps in plan.values() for p in ps) == list(range(8))
    assert sorted(len(ps) for ps in plan.values()) == [2, 3, 3]


def test_a_joining_member_takes_only_what_it_must() -> None:
    before = {"a": list(range(8))}
    after = balance(8, {**before, "b": []})
    assert set(after["a"]) <= set(before["a"]) and len(after["a"]) == 4
    assert sorted(after["a"] + after["b"]) == list(range(8))


def test_a_leaving_member_moves_only_its_partitions() -> None:
    plan = balance(8, {"a": [0, 1, 2], "b": [3, 4, 5], "c": [6, 7]})
    after = balance(8, {"a": plan["a"], "b": plan["b"]})
    assert set(plan["a"]) <= set(after["a"]) and set(plan["b"]) <= set(after["b"])
    assert sorted(after["a"] + after["b"]) == list(range(8))


def test_a_stale_claim_is_ignored() -> None:
    plan = balance(4, {"a": [0, 1, 2, 3, 9], "b": [0]})
    assert sorted(plan["a"] + plan["b"]) == [0, 1, 2, 3]
    assert len(plan["a"]) == len(plan["b"]) == 2
