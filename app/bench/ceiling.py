"""The ceiling: the order flow's hop pattern on plain aiokafka + orjson + rocksdict, at-least-once.

    python -m app.bench.ceiling --bootstrap HOST:PORT --prefix ID --index 0 --of 2 --datadir DIR

Six hops. Hop ``k`` consumes ``{prefix}.h{k-1}`` in batches and, per message, reads and
writes one RocksDB key, then produces the next event to ``{prefix}.h{k}`` and a changelog
record to ``{prefix}-hop{k}-changelog`` (same partition as the input). ``{prefix}.h0``
receives the bench's ``order.placed`` envelopes; hop 6 emits ``order.confirmed``.
Process ``index`` of ``of`` owns the partitions ``p`` with ``p % of == index`` of every
hop topic. Offsets are committed every ``--commit-interval`` seconds, only once the
sends caused by them are acknowledged: at-least-once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from rocksdict import Options, Rdict

from schemas.envelope import derived_id, make

HOPS = 6
#: The event each hop emits, in the order flow's order.
HOP_TYPES = (
    "inventory.reserve",
    "inventory.reserved",
    "payment.charge",
    "payment.processed",
    "inventory.commit",
    "order.confirmed",
)


def hop_topic(prefix: str, k: int) -> str:
    """Return the topic hop ``k`` reads from (``k`` = 1..6), or hop 6's output for ``k`` = 7."""
    return f"{prefix}.h{k - 1}"


def changelog_topic(prefix: str, k: int) -> str:
    """Return hop ``k``'s changelog topic."""
    return f"{prefix}-hop{k}-changelog"


def topics(prefix: str) -> dict[str, dict[str, str]]:
    """Return every topic of the ceiling with its configuration."""
    out: dict[str, dict[str, str]] = {hop_topic(prefix, k): {} for k in range(1, HOPS + 2)}
    out.update({changelog_topic(prefix, k): {"cleanup.policy": "compact"} for k in range(1, HOPS + 1)})
    return out


class Hop:
    """One hop of one process: a consumer on its share of the input partitions."""

    def __init__(self, k: int, args: argparse.Namespace, producer: AIOKafkaProducer, db: Rdict) -> None:
        self.k = k
        self.args = args
        self.producer = producer
        self.db = db
        self.source = hop_topic(args.prefix, k)
        self.target = hop_topic(args.prefix, k + 1)
        self.changelog = changelog_topic(args.prefix, k)
        self.type = HOP_TYPES[k - 1]
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=args.bootstrap,
            group_id=f"{args.prefix}-hop{k}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"{args.prefix}-hop{k}-{args.index}",
        )
        self.acked: asyncio.Queue[tuple[list[asyncio.Future[Any]], dict[TopicPartition, int]]] = asyncio.Queue()

    async def start(self, partitions: Sequence[int]) -> None:
        await self.consumer.start()
        self.consumer.assign([TopicPartition(self.source, p) for p in partitions])

    async def run(self) -> None:
        """Consume a batch; per message read+write a key and produce the next event and a changelog record."""
        loads, dumps, db, send = orjson.loads, orjson.dumps, self.db, self.producer.send
        k, entity = self.k, self.type.split(".", 1)[0]
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=2000)
            futures: list[asyncio.Future[Any]] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batches.items():
                for rec in records:
                    event = loads(rec.value)
                    order_id = event["correlation_id"]
                    key = f"h{k}/{order_id}".encode()
                    old = db.get(key)
                    seen = loads(old)["seen"] + 1 if old is not None else 1
                    state = dumps({"order_id": order_id, "status": self.type, "seen": seen, "offset": rec.offset})
                    db[key] = state
                    out = make(
                        self.type,
                        entity,
                        order_id,
                        event["payload"],
                        correlation_id=order_id,
                        causation_id=event["id"],
                        event_id=derived_id(event["id"], 0),
                    )
                    futures.append(await send(self.target, dumps(out), key=rec.key))
                    futures.append(await send(self.changelog, state, key=key, partition=tp.partition))
                if records:
                    offsets[tp] = records[-1].offset + 1
            if offsets:
                self.acked.put_nowait((futures, offsets))

    async def commit(self) -> None:
        """Commit offsets whose sends were acknowledged, at most every commit interval."""
        ready: dict[TopicPartition, int] = {}
        last = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                futures, offsets = await asyncio.wait_for(self.acked.get(), self.args.commit_interval)
                await asyncio.gather(*futures)
                ready.update(offsets)
            if ready and time.monotonic() - last >= self.args.commit_interval:
                await self.consumer.commit(ready)
                ready = {}
                last = time.monotonic()


async def run(args: argparse.Namespace) -> None:
    """Run the six hops of this process until SIGTERM."""
    Path(args.datadir).mkdir(parents=True, exist_ok=True)
    db = Rdict(str(args.datadir), options=Options(raw_mode=True))
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    hops = [Hop(k, args, producer, db) for k in range(1, HOPS + 1)]
    mine = [p for p in range(args.partitions) if p % args.of == args.index]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for hop in hops:
            await hop.start(mine)
        tasks = [asyncio.create_task(t) for hop in hops for t in (hop.run(), hop.commit())]
        if args.ready_file:
            Path(args.ready_file).write_text("ready\n")
        print(f"ceiling process {args.index}/{args.of}: partitions {mine}", flush=True)
        waiter: asyncio.Task[Any] = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]  # checked just above
    finally:
        for hop in hops:
            with contextlib.suppress(Exception):
                await hop.consumer.stop()
        with contextlib.suppress(Exception):
            await producer.stop()
        db.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m app.bench.ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True, help="host:port of the broker")
    p.add_argument("--prefix", required=True, help="topic prefix of this ceiling run")
    p.add_argument("--index", type=int, default=0, help="this process's number, from 0")
    p.add_argument("--of", type=int, default=1, help="how many processes share the partitions")
    p.add_argument("--partitions", type=int, default=8, help="partitions of every hop topic")
    p.add_argument("--datadir", required=True, help="RocksDB directory of this process")
    p.add_argument("--commit-interval", type=float, default=0.1, help="seconds between offset commits")
    p.add_argument("--ready-file", default="", help="written once every hop has its partitions")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line."""
    asyncio.run(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
