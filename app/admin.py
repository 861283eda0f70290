"""Create every topic the app uses before the consumer subscribes; check the ones that exist.

Faust declares internal topics only after the first assignment, so a fresh
cluster's first worker would join with "missing" topics, own no partitions and
wait minutes for a metadata refresh. Creating them up front avoids that. A worker
whose ``partitions`` setting differs from the topics its app already has would hash
keys to partitions the others do not: it refuses to start instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger("orderstream.admin")


def bootstrap_servers(broker_url: str) -> str:
    """Turn ``kafka://a:9092;kafka://b:9092`` or ``kafka://a:9092,b:9092`` into ``a:9092,b:9092``."""
    hosts = []
    for part in broker_url.replace(";", ",").split(","):
        part = part.strip()
        if part:
            hosts.append(part.split("://", 1)[-1].rstrip("/"))
    return ",".join(hosts)


async def ensure_topics(
    broker_url: str,
    names: Iterable[str],
    partitions: int,
    replication: int,
    compacted: Iterable[str] = (),
) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    compacted = set(compacted)
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(broker_url))
    await client.start()
    try:
        existing = set(await client.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        new = [
            NewTopic(
                n,
                num_partitions=partitions,
                replication_factor=replication,
                topic_configs={"cleanup.policy": "compact"} if n in compacted else {},
            )
            for n in missing
        ]
        try:
            await client.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        log.info("created topics: %s", ", ".join(missing))
    finally:
        await client.close()


async def partitions_problem(broker_url: str, names: Iterable[str], partitions: int) -> str | None:
    """One sentence when topics of ``names`` already exist with another partition count than ``partitions``."""
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(broker_url))
    await client.start()
    try:
        existing = sorted(set(await client.list_topics()) & set(names))
        described = await client.describe_topics(existing) if existing else []
    finally:
        await client.close()
    counts = {t["topic"]: len(t["partitions"]) for t in described if t.get("error_code") == 0}
    wrong = {topic: count for topic, count in counts.items() if count != partitions}
    if not wrong:
        return None
    if len(set(counts.values())) > 1:
        # Not this worker's setting: the topics disagree among themselves (probe 25: partitions
        # added to one by hand; every setting was refused, each refusal naming the other).
        usual = max(set(counts.values()), key=list(counts.values()).count)
        odd = sorted(t for t, n in counts.items() if n != usual)
        shown = ", ".join(f"{t}: {counts[t]}" for t in odd[:3]) + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")
        return (
            f"the app's topics do not all have the same partition count ({shown}; the other {len(counts) - len(odd)} "
            f"have {usual}): partitions were added to some by hand, and Kafka cannot take them away. Re-create "
            f"{'that topic' if len(odd) == 1 else 'those topics'} with {usual} partitions (with ORDERSTREAM_PARTITIONS="
            f"{usual}), or use a new app id."
        )
    topic, count = min(wrong.items())
    others = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
    return (
        f"the app's topics exist with another partition count ({topic}{others}: {count}) than this worker's "
        f"partitions={partitions}, and a key would hash to another partition than the other workers use: "
        f"set ORDERSTREAM_PARTITIONS={count} (every worker of an app the same), or use a new app id."
    )
