"""The crash test: steady load over two workers while one is SIGKILLed and restarted.

``python -m tests.crash --orders 1200 --rate 40 --guarantee exactly_once`` (``make
crash-test`` runs both guarantees). Afterwards it checks, from the topics and from
the API: every order has exactly one outcome event and none is stuck, at most one
``payment.processed`` and one ``notification.sent`` per order, stock is conserved
for every product and never negative, and analytics revenue equals the sum of the
confirmed orders' totals. It prints a report and exits non-zero on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from scripts import kafka_local
from tests.support import FINAL, Cluster, Worker, eventually, http, order_body, set_max_message_bytes, uid

CARDS = [
    ("4242424242424242", 80),
    ("4000000000000002", 6),
    ("4000000000009995", 6),
    ("4000000000000119", 8),
]
OUTCOME_TYPES = ("order.confirmed", "order.rejected", "order.cancelled")
#: How long a topic violation that later events could cure may persist before it counts.
TOPIC_SETTLE = 60.0


@dataclass
class Placed:
    """One order the load placed."""

    order_id: str
    items: list[tuple[str, int, str]]
    posted_at: float


@dataclass
class Report:
    """What the crash test measured and found."""

    guarantee: str
    orders: int = 0
    kills: int = 0
    wiped: int = 0
    load_seconds: float = 0.0
    settle_seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    duplicate_messages: dict[str, int] = field(default_factory=dict)
    latency_p50: float = 0.0
    latency_p95: float = 0.0
    latency_p99: float = 0.0
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a dict."""
        return dict(self.__dict__)


def _pick_card(rng: random.Random) -> str:
    return rng.choices([c for c, _ in CARDS], weights=[w for _, w in CARDS])[0]


def _place(cluster: Cluster, body: dict[str, Any], key: str, start: int) -> str:
    """POST with an idempotency key, retrying on the other worker while one is down."""
    deadline = time.monotonic() + 120
    i = start
    while True:
        url = cluster.urls[i % len(cluster.urls)]
        try:
            resp = http("POST", url + "/orders", body, headers={"Idempotency-Key": key}, timeout=10)
            if resp.status == 202:
                return str(resp.body["order_id"])
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not place order with key {key}")
        i += 1
        time.sleep(0.2)  # backoff before trying the next worker


def _pauses(cluster: Cluster, stop: threading.Event, pauses: int, interval: float, report: Report) -> None:
    """Freeze worker 1 with SIGSTOP until its partitions move to worker 0, then let it go on (SIGCONT).

    The frozen worker may hold fetched input, uncommitted state and an open transaction;
    when it wakes its partitions belong to another worker, whose transactional producers
    fenced it: whatever it tries to land must be refused.
    """
    victim = cluster.workers[1]
    for _ in range(pauses):
        if stop.wait(interval):
            return
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGSTOP)
        report.kills += 1
        with contextlib.suppress(AssertionError):
            eventually(
                lambda: (
                    http("GET", cluster.urls[0] + "/cluster", timeout=5).body.get("workers", [{}])[0].get("url")
                    == cluster.urls[0]
                    and len(http("GET", cluster.urls[0] + "/cluster", timeout=5).body["workers"]) == 1
                ),
                60,
                0.5,
                what="the paused worker's partitions moved",
            )
        victim.proc.send_signal(signal.SIGCONT)


#: Changelogs whose writes the ``refuse`` fault has the broker refuse, in turn.
REFUSED_CHANGELOGS = ("order_records-changelog", "stock_records-changelog")
REFUSE_SECONDS = 3.0


def _refusals(broker: str, app_id: str) -> Callable[[Cluster, threading.Event, int, float, Report], None]:
    """Have the broker refuse every write to a changelog for :data:`REFUSE_SECONDS`, ``n`` times.

    Every commit of the partitions then fails: their uncommitted work is dropped and their
    inputs read again from the last commit, while the load goes on (probe 24: inputs were
    skipped on the way back).
    """

    def refuse(cluster: Cluster, stop: threading.Event, n: int, interval: float, report: Report) -> None:
        for i in range(n):
            if stop.wait(interval):
                return
            topic = f"{app_id}-{REFUSED_CHANGELOGS[i % len(REFUSED_CHANGELOGS)]}"
            asyncio.run(set_max_message_bytes(broker, topic, 100))
            report.kills += 1
            time.sleep(REFUSE_SECONDS)  # the fault's length, not a wait for an effect
            asyncio.run(set_max_message_bytes(broker, topic, 1_048_588))

    return refuse


#: How long the ``outage`` fault keeps the broker down: longer than the deadlines it runs with.
OUTAGE_SECONDS = 12.0
#: The saga's deadlines (payment and pending) under the ``outage`` fault: they pass during it.
OUTAGE_DEADLINES = "4"


class LocalBroker:
    """A broker of this test's own (``kafka_local``) that the ``outage`` fault stops and starts again with its data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = kafka_local.free_port(2)  # below the ephemeral range: no client self-connects to it while down
        self.cluster: kafka_local.Cluster | None = None
        self.up(keep=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self, *, keep: bool = True) -> None:
        self.cluster = kafka_local.start(
            port=self.port, nodes=1, data_dir=self.data_dir, owner_pid=os.getpid(), keep=keep
        )

    def down(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


def _outages(broker: LocalBroker) -> Callable[[Cluster, threading.Event, int, float, Report], None]:
    """Stop the broker for :data:`OUTAGE_SECONDS` with worker 0 frozen (SIGSTOP) and worker 1
    SIGKILLed meanwhile; start the broker, wake worker 0, start worker 1 later; ``n`` times.

    At least once, outputs go out before the commit that holds the state that sent them:
    the commits under way fail with the broker, the partitions are restored to the state
    before them, and worker 0 takes worker 1's. The deadlines pass during the outage, so a
    timer acting on a restored state before its inputs are read again decides against what
    the partition already sent (probe 25: a confirmed order then cancelled and refunded).
    """

    def outage(cluster: Cluster, stop: threading.Event, n: int, interval: float, report: Report) -> None:
        survivor, victim = cluster.workers
        for _ in range(n):
            if stop.wait(interval):
                return
            broker.down()
            assert survivor.proc is not None
            survivor.proc.send_signal(signal.SIGSTOP)  # frozen through it: it wakes to a group that moved on
            victim.kill(signal.SIGKILL)
            report.kills += 1
            time.sleep(OUTAGE_SECONDS)  # the fault's length, not a wait for an effect
            broker.up()
            survivor.proc.send_signal(signal.SIGCONT)  # restores every partition, worker 1's too
            time.sleep(OUTAGE_SECONDS)  # alone with all of them for a while, as the probe had it
            victim.start()
            with contextlib.suppress(AssertionError):
                victim.wait_ready(120)

    return outage


def _chaos(cluster: Cluster, stop: threading.Event, kills: int, interval: float, report: Report) -> None:
    """Kill worker 1 with SIGKILL ``kills`` times, restarting it; the last restart wipes its data."""
    victim = cluster.workers[1]
    for n in range(kills):
        if stop.wait(interval):
            return
        victim.kill(signal.SIGKILL)
        report.kills += 1
        if n == kills - 1:
            shutil.rmtree(victim.datadir, ignore_errors=True)
            report.wiped += 1
        victim.start()
        with contextlib.suppress(AssertionError):
            victim.wait_ready(120)


async def scan_topic(bootstrap: str, topic: str | list[str], *, raw: bool = False) -> list[Any]:
    """Read every committed message of ``topic`` (JSON-decoded, or raw bytes), from the beginning to its end."""
    from aiokafka import AIOKafkaConsumer

    topics = [topic] if isinstance(topic, str) else topic
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=uid("scan"),
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no partitions of {topic} assigned")
            await consumer.getmany(timeout_ms=200)
        parts = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: list[Any] = []
        while True:
            positions = {tp: await consumer.position(tp) for tp in parts}
            if all(positions[tp] >= end[tp] for tp in parts):
                return out
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for r in records:
                    if raw:
                        out.append(r.value or b"")
                        continue
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(r.value))
    finally:
        await consumer.stop()


def _pace(due: float) -> None:
    """Hold the load at a steady rate (pacing, not waiting for an effect)."""
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    broker: str,
    *,
    orders: int,
    rate: float,
    guarantee: str,
    kills: int = 3,
    workdir: Path,
    products: int = 12,
    seed: int = 7,
    fault: str = "kill",
    restore_check: bool = False,
    local: LocalBroker | None = None,
) -> Report:
    """Run the crash test against ``broker`` (``host:port``) and return the report.

    ``fault`` is ``kill`` (SIGKILL and restart, the last time with a wiped data directory),
    ``pause`` (SIGSTOP until the partitions move, then SIGCONT), ``refuse`` (the broker
    refuses a changelog's writes for a few seconds: every commit fails meanwhile) or
    ``outage`` (``local``, this test's own broker, stopped for a while, worker 1 SIGKILLed
    meanwhile; the deadlines are a few seconds then). With ``restore_check``
    both workers are then restarted on empty data directories, so every answer comes from
    state restored from the changelogs alone, and the checks run again.
    """
    rng = random.Random(seed)
    report = Report(guarantee=guarantee)
    app_id = uid("crash")
    env = {
        "ORDERSTREAM_PROCESSING_GUARANTEE": guarantee,
        "ORDERSTREAM_GATEWAY_TIMEOUT": "2",
        "ORDERSTREAM_PAYMENT_TIMEOUT": OUTAGE_DEADLINES if fault == "outage" else "60",
        "ORDERSTREAM_SESSION_TIMEOUT": "6" if fault == "pause" else "10",
    }
    if fault == "outage":
        assert local is not None, "the outage fault stops the test's own broker"
        env["ORDERSTREAM_PENDING_TIMEOUT"] = OUTAGE_DEADLINES
        env["ORDERSTREAM_COMMIT_INTERVAL"] = "1"  # a second of sent outputs whose state the outage loses
    workers = [Worker(app_id, f"kafka://{broker}", workdir / f"w{i}", env=dict(env)).start() for i in range(2)]
    cluster = Cluster(workers)
    try:
        cluster.wait_ready()
        catalog = {f"{app_id}-p{i}": (20 if i < 2 else orders) for i in range(products)}
        for pid, on_hand in catalog.items():
            cluster.set_stock(pid, on_hand)
        placed: list[Placed] = []
        stop = threading.Event()
        interval = max(orders / rate / (kills + 1), 3.0)
        faults: dict[str, Callable[[Cluster, threading.Event, int, float, Report], None]] = {
            "pause": _pauses,
            "kill": _chaos,
            "refuse": _refusals(broker, app_id),
        }
        target = _outages(local) if local is not None and fault == "outage" else faults[fault]
        chaos = threading.Thread(target=target, args=(cluster, stop, kills, interval, report), daemon=True)
        started = time.monotonic()
        chaos.start()
        with ThreadPoolExecutor(max_workers=32) as pool:
            futures = []
            for n in range(orders):
                _pace(started + n / rate)
                lines = rng.sample(sorted(catalog), k=rng.choice([1, 1, 2, 3]))
                items = [(pid, rng.randint(1, 3), f"{rng.randint(1, 5000) / 100:.2f}") for pid in lines]
                body = order_body(items, user_id=f"u{n % 50}", card=_pick_card(rng))
                key = f"{app_id}-{n}"
                futures.append((items, time.monotonic(), pool.submit(_place, cluster, body, key, n)))
            for items, t0, fut in futures:
                placed.append(Placed(fut.result(), items, t0))
        report.load_seconds = time.monotonic() - started
        report.orders = len(placed)
        chaos.join(timeout=300)
        stop.set()
        for w in cluster.workers:
            if w.proc is None or w.proc.poll() is not None:
                w.start()
        cluster.wait_ready(180)

        settle_start = time.monotonic()
        finals: dict[str, dict[str, Any]] = {}

        def all_final() -> bool:
            # Every order is read on every pass (not just up to the first one still open), so
            # one stuck order does not hide the others' outcomes from the later checks.
            done = True
            for p in placed:
                if p.order_id in finals:
                    continue
                r = http("GET", cluster.urls[len(finals) % 2] + f"/orders/{p.order_id}", timeout=10)
                if r.status != 200 or r.body["status"] not in FINAL:
                    done = False
                    continue
                finals[p.order_id] = r.body
            return done

        try:
            eventually(all_final, 300, 1.0, what="every order final")
        except AssertionError:
            stuck = [p.order_id for p in placed if p.order_id not in finals]
            report.violations.append(f"{len(stuck)} orders not final (stuck), e.g. {stuck[:5]}")
        report.settle_seconds = time.monotonic() - settle_start
        report.outcomes = dict(Counter(o["status"] for o in finals.values()))
        latencies = []
        for p in placed:
            o = finals.get(p.order_id)
            if o:
                from schemas.envelope import parse_ts

                latencies.append((parse_ts(o["updated_at"]) - parse_ts(o["created_at"])).total_seconds())
        report.latency_p50 = _percentile(latencies, 0.50)
        report.latency_p95 = _percentile(latencies, 0.95)
        report.latency_p99 = _percentile(latencies, 0.99)
        _check_topics(broker, app_id, placed, finals, report)
        _check_stock(cluster, catalog, finals, report)
        _check_analytics(cluster, finals, report)
        if restore_check:
            for w in cluster.workers:
                w.stop()
                shutil.rmtree(w.datadir, ignore_errors=True)
                w.start()
            cluster.wait_ready(180)
            for p in placed:
                r = eventually(
                    lambda p=p: (
                        (r := http("GET", cluster.urls[0] + f"/orders/{p.order_id}", timeout=10)).status == 200 and r
                    ),
                    60,
                    what="restored order",
                )
                if r and r.body["status"] != finals.get(p.order_id, {}).get("status"):
                    report.violations.append(
                        f"order {p.order_id} restored from the changelogs as {r.body['status']}, "
                        f"live it was {finals.get(p.order_id, {}).get('status')}"
                    )
            _check_stock(cluster, catalog, finals, report)
            _check_analytics(cluster, finals, report)
        return report
    finally:
        cluster.stop()


def _check_topics(
    broker: str, app_id: str, placed: list[Placed], finals: dict[str, dict[str, Any]], report: Report
) -> None:
    """Check the orders topic; rescan for a while, as a confirmed order's notification may still be on its way.

    An order reads ``confirmed`` before its ``notification.sent`` (and, under
    exactly-once, before the transaction that carries it commits), so a violation that
    later events can cure is only final once it persists for ``TOPIC_SETTLE`` seconds.
    """
    found = Report(guarantee=report.guarantee)

    def clean() -> bool:
        found.violations.clear()
        _scan_topics(broker, app_id, placed, finals, found)
        return not found.violations

    try:
        eventually(clean, TOPIC_SETTLE, 2.0, what="topic violations cured by later events")
    except AssertionError:
        if not found.violations:  # every pass failed to read the topic: let that error show
            _scan_topics(broker, app_id, placed, finals, found)
    report.duplicate_messages = found.duplicate_messages
    report.violations.extend(found.violations)


def _scan_topics(
    broker: str, app_id: str, placed: list[Placed], finals: dict[str, dict[str, Any]], report: Report
) -> None:
    events = asyncio.run(scan_topic(broker, f"{app_id}.orders"))
    ids_by_order_type: dict[tuple[str, str], set[str]] = defaultdict(set)
    messages = Counter()
    for e in events:
        if not isinstance(e, dict) or "type" not in e:
            continue
        order_id = e.get("correlation_id") or e.get("entity_id")
        ids_by_order_type[(order_id, e["type"])].add(e["id"])
        messages[e["type"]] += 1
    distinct = Counter()
    for (_, type_), ids in ids_by_order_type.items():
        distinct[type_] += len(ids)
    report.duplicate_messages = {t: messages[t] - distinct[t] for t in messages if messages[t] != distinct[t]}
    for p in placed:
        outcomes = sum(len(ids_by_order_type.get((p.order_id, t), ())) for t in OUTCOME_TYPES)
        if outcomes != 1:
            report.violations.append(f"order {p.order_id} has {outcomes} outcome events")
        for t in ("payment.processed", "notification.sent", "analytics.order_recorded"):
            n = len(ids_by_order_type.get((p.order_id, t), ()))
            if n > 1:
                report.violations.append(f"order {p.order_id} has {n} distinct {t} events")
        status = finals.get(p.order_id, {}).get("status")
        if status == "confirmed":
            for t in ("payment.processed", "notification.sent"):
                if not ids_by_order_type.get((p.order_id, t)):
                    report.violations.append(f"confirmed order {p.order_id} has no {t} event")


def _check_stock(cluster: Cluster, catalog: dict[str, int], finals: dict[str, dict[str, Any]], report: Report) -> None:
    """Check every product, waiting (up to a minute) for the last commits and releases to land.

    A confirmed order's lines move from ``reserved`` to ``sold`` after it reads
    ``confirmed``, so only a violation that persists counts.
    """
    sold: Counter[str] = Counter()
    for o in finals.values():
        if o["status"] in ("confirmed", "shipped", "delivered"):
            for item in o["items"]:
                sold[item["product_id"]] += item["quantity"]
    found: list[str] = []

    def check() -> bool:
        found.clear()
        for pid, initial in catalog.items():
            s = cluster.get(f"/inventory/{pid}").body
            if min(s["on_hand"], s["reserved"], s["sold"], s["available"]) < 0:
                found.append(f"negative stock for {pid}: {s}")
            if s["available"] + s["reserved"] + s["sold"] != initial:
                found.append(f"stock not conserved for {pid}: initial {initial}, now {s}")
            if s["reserved"] != 0:
                found.append(f"{pid}: {s['reserved']} units still reserved")
            if s["sold"] != sold[pid]:
                found.append(f"{pid}: sold {s['sold']} but confirmed orders hold {sold[pid]}")
        return not found

    try:
        eventually(check, 60, 0.5, what="stock settled and conserved")
    except AssertionError:
        report.violations.extend(found)


def _check_analytics(cluster: Cluster, finals: dict[str, dict[str, Any]], report: Report) -> None:
    expected = sum(Decimal(o["total"]) for o in finals.values() if o["status"] in ("confirmed", "shipped", "delivered"))

    def matches() -> bool:
        return Decimal(cluster.get("/analytics/summary").body["revenue"]["total"]) == expected

    try:
        eventually(matches, 60, 0.5, what="analytics revenue == confirmed totals")
    except AssertionError:
        got = cluster.get("/analytics/summary").body
        total = got.get("revenue", {}).get("total") if isinstance(got, dict) else got
        report.violations.append(f"analytics revenue {total} != sum of confirmed totals {expected}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1200)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--guarantee", choices=["exactly_once", "at_least_once"], default="exactly_once")
    parser.add_argument("--broker", default=os.environ.get("ORDERSTREAM_TEST_BROKER", ""), help="host:port")
    parser.add_argument(
        "--fault",
        choices=["kill", "pause", "refuse", "outage"],
        default="kill",
        help="what happens to the workers (outage: the test's own broker stops a while; --broker is ignored)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (worker logs) afterwards")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="orderstream-crash-")
    print(f"work directory: {tmp}", flush=True)
    local = None
    broker = args.broker
    try:
        if not broker or args.fault == "outage":
            local = LocalBroker(Path(tmp) / "kafka")
            broker = local.bootstrap
        report = run(
            broker,
            orders=args.orders,
            rate=args.rate,
            guarantee=args.guarantee,
            kills=args.kills,
            workdir=Path(tmp),
            fault=args.fault,
            local=local,
        )
    finally:
        if local is not None:
            local.down()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report.as_dict(), indent=2))
    if report.violations:
        print(f"FAILED: {len(report.violations)} violation(s)", file=sys.stderr)
        return 1
    print(f"crash test passed ({args.guarantee}): {report.orders} orders, {report.kills} SIGKILLs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
