"""Handler-path cost per order, without Kafka: every stage's real adapter over real partition databases.

    python -m app.bench.steps --orders 5000

Feeds one-line orders through the engine's own ``_handle`` (decode, route, handler,
dead-letter path), moving each step's outputs back in as inputs through an in-memory
queue instead of a broker, and applying a commit every ``--batch`` records as the engine
does (``Step.freeze`` + ``PartitionDB.apply``). Prints microseconds of CPU per order, the
part of a worker's cost per order that is orderstream's own (the rest is aiokafka's
consume and produce, and the broker's).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import orjson


class PlainRecord(NamedTuple):
    """What the engine reads of aiokafka's ``ConsumerRecord`` (a record made without a broker)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


async def run(orders: int, batch: int, *, mixed: bool = False) -> dict[str, Any]:
    """Run ``orders`` orders through every stage; return the cost figures and the work directory (yours to remove).

    ``mixed``: orders of one to four lines over 100 products, some of them short of stock
    (rejected) and some paid with a card that is declined (cancelled) — every kind of record.
    """
    import agents  # noqa: F401  # registers every stage with the engine
    from app.engine.runtime import Task, tune_gc
    from app.engine.step import Step
    from app.engine.store import PartitionDB
    from app.gateway import SimulatedGateway
    from app.main import engine
    from schemas.registry import order_placed, set_stock_command

    # One partition holds every key here: the stages check that a message is on its key's partition.
    engine.partitions, engine._partitions_by_key = 1, {}
    workdir = Path(tempfile.mkdtemp(prefix="steps-bench-"))
    db = PartitionDB(workdir / "p0", 0, engine.indexer)
    task = Task(0, Step(0, db), producer=None)  # type: ignore[arg-type]  # nothing is produced
    queue: deque[Any] = deque()
    gateway = SimulatedGateway()
    card, declined = gateway.tokenize("4242424242424242"), gateway.tokenize("4000000000000002")
    offsets = 0

    def record(
        topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> Any:
        nonlocal offsets
        offsets += 1
        return PlainRecord(topic, 0, offsets, key, value, headers or [])

    products = [f"sku-{n:04d}" for n in range(100)] if mixed else ["p"]
    for n, product in enumerate(products):
        on_hand = 3 if mixed and n % 10 == 0 else 10**9
        stock = set_stock_command(product, on_hand)
        queue.append(record(f"{engine.app_id}.inventory", product.encode(), orjson.dumps(stock)))
    for i in range(orders):
        oid = f"o{i:08d}"
        lines = 1 + i % 4 if mixed else 1
        items: list[dict[str, Any]] = [
            {
                "product_id": products[(i * 7 + j * 13) % len(products)],
                "quantity": 1 + (i + j) % 3,
                "price_cents": 199 + 37 * j,
            }
            for j in range(lines)
        ]
        paid_with = declined if mixed and i % 17 == 0 else card
        payload = {
            "order_id": oid,
            "user_id": f"u{i % 100}",
            "user_email": f"buyer{i % 100}@example.com" if mixed else "buyer@example.com",
            "items": items,
            "total_cents": sum(item["quantity"] * item["price_cents"] for item in items),
            "currency": "USD",
            "payment": {"method": "card", "token": paid_with.token, "last4": paid_with.last4},
        }
        env = order_placed(oid, payload)
        queue.append(record(f"{engine.app_id}.orders", oid.encode(), orjson.dumps(env)))
    tune_gc()  # as a worker does at start: without it a fifth of this path's CPU is the collector
    handled = 0
    started = time.process_time()
    while queue or task.local or task.effects:
        if not queue and not task.local:
            await asyncio.sleep(0)  # the gateway calls the engine started come back as local inputs
        while queue:
            r = queue.popleft()
            await engine._handle(task, engine.topics.get(r.topic, r.topic), r)
            handled += 1
            for out in task.step.outputs:
                queue.append(record(out.topic, out.key, out.value, out.headers))
            task.step.outputs = []
            if handled % batch == 0:
                writes, _ = task.step.freeze()
                db.apply(writes, {})
                task.step.landed()
        while task.local:
            logical, env, _, _, headers = task.local.popleft()
            await engine._handle_local(task, logical, env, headers)
            for out in task.step.outputs:
                queue.append(record(out.topic, out.key, out.value, out.headers))
            task.step.outputs = []
    writes, _ = task.step.freeze()
    db.apply(writes, {})
    cpu = time.process_time() - started
    db.close()
    return {
        "workdir": str(workdir),
        "orders": orders,
        "records": handled,
        "cpu_us_per_order": cpu / orders * 1e6,
        "cpu_us_per_record": cpu / handled * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(prog="python -m app.bench.steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500, help="records per commit")
    parser.add_argument("--mixed", action="store_true", help="1-4 lines, some orders rejected or cancelled")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.orders, args.batch, mixed=args.mixed))
    shutil.rmtree(figures["workdir"], ignore_errors=True)
    print(
        f"{figures['orders']} orders, {figures['records']} records handled: "
        f"{figures['cpu_us_per_order']:.0f} µs CPU per order, {figures['cpu_us_per_record']:.1f} µs per record"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
