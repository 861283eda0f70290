"""What one order costs in Kafka does not grow with its history: a 100-line order writes less than 1 MB in all.

Real broker, two real worker processes. Every record any topic of the app gains while
one order runs (its events, commands and every changelog record, all stages) is read
back and counted: key, value and headers. Two 100-line orders: one of 100 stocked
products (confirmed) and one of 100 unknown 128-character product ids (rejected, the
case that once wrote 18.5 MB of changelog).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support import Cluster, eventually, order_body, uid

pytestmark = [pytest.mark.e2e]

LIMIT = 1_000_000


async def _ends(bootstrap: str, prefix: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()  # every topic, not only assigned ones
        topics = [t for t in cluster.topics() if t.startswith(prefix)]
        tps = [TopicPartition(t, p) for t in topics for p in cluster.partitions_for_topic(t) or ()]
        return dict(await consumer.end_offsets(tps)) if tps else {}
    finally:
        await consumer.stop()


async def _bytes_between(bootstrap: str, before: dict[TopicPartition, int], after: dict[TopicPartition, int]) -> int:
    """Key + value + header bytes of every record between two snapshots of the end offsets."""
    todo = {tp: end for tp, end in after.items() if end > before.get(tp, 0)}
    if not todo:
        return 0
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_uncommitted"
    )
    await consumer.start()
    total = 0
    try:
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, before.get(tp, 0))
        deadline = time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    if tp in todo and r.offset < todo[tp]:
                        total += len(r.key or b"") + len(r.value or b"")
                        total += sum(len(k.encode()) + len(v or b"") for k, v in r.headers or ())
            for tp in list(todo):  # the position passes transaction markers too
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
                    consumer.pause(tp)
        assert not todo, f"could not read {todo}"
    finally:
        await consumer.stop()
    return total


def _quiet(bootstrap: str, prefix: str) -> dict[TopicPartition, int]:
    """The end offsets once two reads a second apart agree (every stage done with the order)."""
    last: list[dict[TopicPartition, int]] = [{}]

    def settled() -> dict[TopicPartition, int] | None:
        now = asyncio.run(_ends(bootstrap, prefix))
        same = bool(now) and now == last[0]
        last[0] = now
        return now if same else None

    return eventually(settled, 60, 1.0, what="the app's topics quiet")


@pytest.mark.parametrize("known", [True, False], ids=["stocked-confirmed", "unknown-rejected"])
def test_a_hundred_line_order_writes_less_than_a_megabyte(make_cluster: Any, kafka_bootstrap: str, known: bool) -> None:
    cluster: Cluster = make_cluster(2)
    app_id = cluster.workers[0].app_id
    if known:
        products = [uid("p") for _ in range(100)]
        for p in products:
            assert cluster.put(f"/inventory/{p}", {"on_hand": 10}).status == 202
        eventually(lambda: all(cluster.get(f"/inventory/{p}").body.get("on_hand") == 10 for p in products), 60)
    else:
        products = [(uid("x") * 12)[:128] for _ in range(100)]
    before = _quiet(kafka_bootstrap, app_id)
    order_id = cluster.place(order_body([(p, 1, "1.00") for p in products]))
    state = cluster.final(order_id, timeout=60)
    assert state["status"] == ("confirmed" if known else "rejected"), state
    after = _quiet(kafka_bootstrap, app_id)
    written = asyncio.run(_bytes_between(kafka_bootstrap, before, after))
    print(f"100-line order ({'stocked' if known else 'unknown products'}): {written:,} bytes in all topics")
    assert 0 < written < LIMIT
