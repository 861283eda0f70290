"""Where the rebuild reads from: the event topics (from the beginning) and, for ``--compare``, the live API.

Topics are read to their current (last stable) end with ``read_committed``, under a
fresh consumer group that commits nothing, so the workers are never disturbed.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from app.rebuild.fold import SOURCES, Message, Models, rebuild


class RebuildError(Exception):
    """The rebuild cannot run (no such topic, broker unreachable, reading stalled, API unanswered)."""


def topic_names(app_id: str) -> dict[str, str]:
    """Return logical name -> Kafka topic name of the topics the rebuild reads."""
    return {name: f"{app_id}.{name}" for name in SOURCES}


def _loads(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


async def _partitions(bootstrap: str, topics: Sequence[str]) -> dict[str, list[int]]:
    """Return each topic's partition numbers; raise :class:`RebuildError` for a topic that does not exist."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        # Every topic's metadata: asking for named topics would auto-create missing ones on many brokers.
        described = await admin.describe_topics(None)
    except KafkaError as exc:
        raise RebuildError(f"cannot reach the broker at {bootstrap}: {exc}") from exc
    finally:
        await admin.close()
    found = {d["topic"]: sorted(p["partition"] for p in d["partitions"]) for d in described if not d["error_code"]}
    missing = [t for t in topics if not found.get(t)]
    if missing:
        raise RebuildError(f"no such topic on {bootstrap}: {', '.join(missing)}")
    return {t: found[t] for t in topics}


async def read_topics(
    bootstrap: str, topics: Sequence[str], *, progress: bool = True, stall_timeout: float = 60.0
) -> dict[str, list[Message]]:
    """Read every committed message of ``topics`` from the beginning to their end as of now, per partition in order."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError
    from tqdm import tqdm

    tps = [TopicPartition(topic, p) for topic, parts in (await _partitions(bootstrap, topics)).items() for p in parts]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"rebuild-{uuid.uuid4().hex[:12]}",
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        raise RebuildError(f"cannot reach the broker at {bootstrap}: {exc}") from exc
    try:
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, begin[tp])
        out: dict[TopicPartition, list[Message]] = {tp: [] for tp in tps}
        total = sum(end[tp] - begin[tp] for tp in tps)
        remaining = {tp for tp in tps if end[tp] > begin[tp]}
        done = 0
        last_progress = time.monotonic()
        with tqdm(total=total, unit="msg", desc="reading", disable=not progress, file=sys.stderr) as bar:
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
                for tp, records in batch.items():
                    for r in records:
                        if r.offset < end[tp]:
                            key = r.key.decode("utf-8", errors="replace") if r.key is not None else None
                            out[tp].append(Message(key, _loads(r.value), tp.partition))
                # Offsets, not record counts: transaction markers and aborted records take offsets too.
                left = 0
                for tp in list(remaining):
                    position = await consumer.position(tp)
                    if position >= end[tp]:
                        remaining.discard(tp)
                    else:
                        left += end[tp] - position
                now_done = total - left
                if now_done > done:
                    bar.update(now_done - done)
                    done = now_done
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > stall_timeout:
                    raise RebuildError(f"reading stalled for {stall_timeout:.0f}s at {done}/{total} offsets")
        by_topic: dict[str, list[Message]] = {t: [] for t in topics}
        for tp in tps:
            by_topic[tp.topic].extend(out[tp])
        return by_topic
    finally:
        await consumer.stop()


async def rebuild_from_kafka(
    bootstrap: str,
    app_id: str,
    *,
    payment_timeout: float = 30.0,
    pending_timeout: float | None = None,
    progress: bool = True,
) -> Models:
    """Read the app's event topics and rebuild the read models from them."""
    names = topic_names(app_id)
    read = await read_topics(bootstrap, list(names.values()), progress=progress)
    return rebuild({logical: read[kafka] for logical, kafka in names.items()}, payment_timeout, pending_timeout)


async def fetch_live(url: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """Fetch every order, every product's stock and the analytics summary from a worker's API."""
    import aiohttp

    base = url.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def get(path: str) -> Any:
            attempts = 10  # a 503 (a partition moving, a table recovering) is worth waiting for
            for attempt in range(1, attempts + 1):
                try:
                    async with session.get(base + path) as resp:
                        if resp.status == 200:
                            return await resp.json()
                        if resp.status != 503 or attempt == attempts:
                            raise RebuildError(f"GET {base}{path}: {resp.status} {await resp.text()}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise RebuildError(f"GET {base}{path}: {exc or type(exc).__name__}") from exc
                await asyncio.sleep(1.0)
            raise RebuildError(f"GET {base}{path}: no answer")

        async def pages(path: str, field_: str, key: str) -> dict[str, Any]:
            rows: dict[str, Any] = {}
            cursor: str | None = None
            while True:
                page = await get(f"{path}?limit=500" + (f"&cursor={cursor}" if cursor else ""))
                rows.update((row[key], row) for row in page[field_])
                cursor = page.get("next_cursor")
                if not cursor:
                    return rows

        return {
            "orders": await pages("/orders", "orders", "order_id"),
            "stock": await pages("/inventory", "products", "product_id"),
            "analytics": await get("/analytics/summary"),
        }
