"""Give each worker whole partition numbers, and tell every worker who owns which.

A task is partition ``p`` of every input topic together with partition ``p`` of every
store, so the assignor hands out partition *numbers*: a member that gets ``p`` gets
``p`` of every subscribed topic. Assignment is sticky (a member keeps what it owned
while the group stays balanced), so a worker joining or leaving moves only the
partitions it must. Each member's metadata carries its web URL; the assignment carries
the whole ``partition -> URL`` map to every member, which is how any worker answers any
key (``app.web.routing``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata


def balance(partitions: int, members: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Assign partition numbers ``0..partitions-1`` to ``members``, keeping what each owned where balance allows.

    ``members`` maps a member id to the partitions it owned before. Every member ends
    with ``partitions // n`` or one more; a partition moves only when its owner has too
    many or left.
    """
    ids = sorted(members)
    if not ids:
        return {}
    base, extra = divmod(partitions, len(ids))
    # Members that owned most keep the extra slots: fewer moves.
    by_owned = sorted(ids, key=lambda m: (-len(members[m]), m))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_owned)}
    out: dict[str, list[int]] = {m: [] for m in ids}
    taken: set[int] = set()
    for m in by_owned:
        for p in sorted(set(members[m])):
            if 0 <= p < partitions and p not in taken and len(out[m]) < quota[m]:
                out[m].append(p)
                taken.add(p)
    free = [p for p in range(partitions) if p not in taken]
    for m in by_owned:
        while len(out[m]) < quota[m] and free:
            out[m].append(free.pop(0))
    return {m: sorted(ps) for m, ps in out.items()}


class TaskAssignor(AbstractPartitionAssignor):
    """Sticky partition-number assignment with every member's URL published to all."""

    name = "orderstream-tasks"
    version = 0
    #: This worker's web URL and partition count (set once by the engine before it joins).
    url: str = ""
    partitions: int = 1
    #: What this worker owns and the group's ``partition -> URL`` map, as of the last assignment.
    owned: list[int] = []  # noqa: RUF012 - class-level state: aiokafka calls assignors as classes
    owners: dict[int, str] = {}  # noqa: RUF012

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """Subscribe to ``topics``, telling the leader our URL and what we own now."""
        user_data = orjson.dumps({"url": cls.url, "owned": cls.owned})
        return ConsumerProtocolMemberMetadata(cls.version, sorted(topics), user_data)

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """Run on the group leader: partition numbers to members, the owner map to everyone."""
        info: dict[str, dict[str, Any]] = {}
        topics: set[str] = set()
        for member_id, meta in members.items():
            topics.update(meta.subscription)
            try:
                info[member_id] = orjson.loads(meta.user_data or b"{}")
            except orjson.JSONDecodeError:
                info[member_id] = {}
        counts = [len(cluster.partitions_for_topic(t) or ()) for t in topics]
        partitions = min([c for c in counts if c] or [cls.partitions])
        plan = balance(partitions, {m: list(info[m].get("owned") or []) for m in members})
        owners = {str(p): info[m].get("url", "") for m, ps in plan.items() for p in ps}
        user_data = orjson.dumps({"owners": owners})
        out = {}
        for member_id, ps in plan.items():
            assignment = [(t, ps) for t in sorted(topics)] if ps else []
            out[member_id] = ConsumerProtocolMemberAssignment(cls.version, assignment, user_data)
        return out

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Remember what we own and who owns the rest."""
        data = orjson.loads(assignment.user_data or b"{}")
        cls.owners = {int(p): str(u) for p, u in (data.get("owners") or {}).items()}
        cls.owned = sorted({p for _, ps in assignment.assignment for p in ps})
