"""Where an order's time goes: the gap between consecutive events of each order, per hop.

    python -m app.bench.hops --broker kafka://127.0.0.1:9092 --app-id bn1234abcdalo2w

Reads every committed event of an app's ``orders``, ``inventory`` and ``payments`` topics
(a bench run's app id is printed when its workers start), groups them by order (the
envelope's ``correlation_id``) in the order the broker stamped them (record timestamps,
milliseconds) and prints, per pair of consecutive event types, how many there were and
the p50/p95/p99 of the gap. A hop that waits for a fetch, a commit or a produce
acknowledgement shows here.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections import defaultdict

import orjson
from aiokafka import AIOKafkaConsumer

TOPICS = ("orders", "inventory", "payments")


async def gaps(bootstrap: str, app_id: str, idle_s: float = 3.0) -> dict[tuple[str, str], list[int]]:
    """``{(event type, next event type): [gap ms, ...]}`` over every order of ``app_id``."""
    consumer = AIOKafkaConsumer(
        *(f"{app_id}.{t}" for t in TOPICS),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    events: dict[str, list[tuple[int, str]]] = defaultdict(list)
    try:
        quiet = 0.0
        while quiet < idle_s:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            quiet = quiet + 0.5 if not batch else 0.0
            for records in batch.values():
                for record in records:
                    try:
                        env = orjson.loads(record.value)
                        events[str(env["correlation_id"])].append((record.timestamp, str(env["type"])))
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue
    finally:
        await consumer.stop()
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for seq in events.values():
        seq.sort()
        for (t0, a), (t1, b) in itertools.pairwise(seq):
            out[(a, b)].append(t1 - t0)
    return out


def _pct(values: list[int], q: float) -> int:
    return values[min(len(values) - 1, int(len(values) * q))]


def main(argv: list[str] | None = None) -> int:
    """Print the per-hop gaps of one app's orders."""
    parser = argparse.ArgumentParser(prog="python -m app.bench.hops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, help="kafka://host:port")
    parser.add_argument("--app-id", required=True, help="the app id whose topics to read")
    parser.add_argument("--min-count", type=int, default=100, help="leave out rarer hops (default 100)")
    args = parser.parse_args(argv)
    found = asyncio.run(gaps(args.broker.removeprefix("kafka://"), args.app_id))
    rows = sorted(((k, sorted(v)) for k, v in found.items() if len(v) >= args.min_count), key=lambda kv: -len(kv[1]))
    if not rows:
        print(f"no hop of {args.app_id} seen {args.min_count} times")
        return 1
    print(f"{'hop':<62} {'n':>7} {'p50':>6} {'p95':>6} {'p99':>6}  (ms)")
    for (a, b), v in rows:
        print(f"{a + ' -> ' + b:<62} {len(v):>7} {_pct(v, 0.5):>6} {_pct(v, 0.95):>6} {_pct(v, 0.99):>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
