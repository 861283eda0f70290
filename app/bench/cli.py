"""Measure orderstream through Kafka against a plain-Python ceiling, in one run.

    python -m app.bench --orders 2000 --rates 500,max --output bench.json --plot bench.png

Starts a local broker (or uses ``ORDERSTREAM_BROKER``), then per configuration
(guarantee × workers) starts fresh workers with their own app id, sets stock through
``PUT /inventory/{id}``, writes ``order.placed`` envelopes straight into the orders topic
(open-loop at each offered rate, or flat out) and reads the outcomes with a
``read_committed`` consumer. Before any configuration it runs the ceiling, the same
six-hop pattern on plain aiokafka + orjson + rocksdict in two processes
(``app/bench/ceiling.py``), at the same rates; every figure is printed beside its ratio
to the ceiling. Every process it started is ended on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from aiokafka.structs import TopicPartition
from tqdm import tqdm

from app.bench import ceiling as ceiling_mod
from app.bench import kafka as bk
from app.bench import procs
from app.bench.stats import (
    ceiling_for,
    check_run,
    config_name,
    latency_ms,
    parse_rates,
    parse_windows,
    produced_summary,
    rate_label,
    run_lines,
    vs_ceiling,
)
from scripts import kafka_local

GUARANTEES = ("at_least_once", "exactly_once")
SHORT = {"at_least_once": "alo", "exactly_once": "eos"}


def say(message: str) -> None:
    """Print a line without breaking the progress bar."""
    tqdm.write(message, file=sys.stderr)


@dataclass
class Bench:
    """What one bench run shares across configurations; ``close`` ends every process it started."""

    args: argparse.Namespace
    workdir: Path
    run_id: str
    reaper: procs.Reaper = field(default_factory=procs.Reaper)
    cluster: kafka_local.Cluster | None = None
    bootstrap: str = ""
    broker_pid: int | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)

    def close(self) -> None:
        """End the workers, the ceiling processes and the broker this run started."""
        self.reaper.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.stop(grace=10.0)
            self.cluster = None
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --- one measurement ----------------------------------------------------------------------


@dataclass
class Target:
    """What a measurement drives and watches."""

    name: str
    engine: str
    guarantee: str
    workers: int
    app_id: str
    input_topic: str
    outcome_topic: str
    processes: list[Any]  # subprocess.Popen of the workers or the ceiling's processes
    prefix: str


async def wait_drained(tally: bk.Tally, ids: Sequence[str], target: Target, args: argparse.Namespace) -> str:
    """Wait until every order of ``ids`` has an outcome; return why the wait ended."""
    deadline = time.monotonic() + args.run_timeout
    pending = set(ids)
    last_progress = time.monotonic()
    while True:
        before = len(pending)
        pending = {o for o in pending if o not in tally.done_at}
        if not pending:
            return "complete"
        if len(pending) != before:
            last_progress = time.monotonic()
        if time.monotonic() - last_progress > args.drain_timeout:
            return f"no outcome for {args.drain_timeout:g} s"
        if time.monotonic() > deadline:
            return f"run timeout ({args.run_timeout:g} s)"
        dead = [p for p in target.processes if p.poll() is not None]
        if dead:
            return f"{len(dead)} process(es) exited (code {dead[0].returncode})"
        await asyncio.sleep(0.1)


async def measure(bench: Bench, target: Target, rate: float | None) -> dict[str, Any]:
    """Drive one configuration at one offered rate and return its figures."""
    args = bench.args
    edges = args.windows or [args.orders if target.engine == "orderstream" else args.ceiling_orders]
    total = edges[-1]
    pids = [p.pid for p in target.processes]
    tally = bk.Tally()
    consumer = await bk.outcome_consumer(bench.bootstrap, target.outcome_topic)
    prod = bk.producer(bench.bootstrap)
    stop = asyncio.Event()
    collector = asyncio.create_task(bk.collect_outcomes(consumer, tally, stop))
    desc = f"{target.name} @ {rate_label(rate)}"
    # disable=None: a bar only on a terminal.
    bar = tqdm(total=total, desc=desc, unit="order", disable=None if args.progress else True, file=sys.stderr)
    sent_total = 0

    def on_sent(n: int) -> None:
        bar.set_postfix_str(f"sent {sent_total + n:,}", refresh=False)

    active = 0.0
    send_seconds = 0.0
    driver_seconds = 0.0  # this process's CPU while sending and reading outcomes (it shares the cores)
    ended: list[str] = []
    settled: list[bool] = []
    try:
        await prod.start()
        if args.warmup:
            await warm_up(bench, target, prod, tally)
        snapshots = [await bk.end_offsets(bench.bootstrap, target.app_id)]

        def advance(_order_id: str) -> None:
            bar.update(1)

        tally.on_outcome = advance
        cpu0 = [procs.cpu_seconds(p) for p in pids]
        broker0 = procs.cpu_seconds(bench.broker_pid) if bench.broker_pid else None
        wall0 = wall1 = time.monotonic()
        cpu1, broker1 = cpu0, broker0
        first = 0
        for edge in edges:
            orders = bk.placed_orders(target.prefix, first, edge - first, products=args.products, lines=args.lines)
            ids = [o.order_id for o in orders]
            t_start, p_start = time.monotonic(), time.process_time()
            await bk.send_orders(prod, target.input_topic, orders, rate, tally, on_sent)
            await prod.flush()
            send_seconds += time.monotonic() - t_start
            sent_total += len(orders)
            ended.append(await wait_drained(tally, ids, target, args))
            driver_seconds += time.process_time() - p_start
            last = max((tally.done_at[o] for o in ids if o in tally.done_at), default=t_start)
            active += max(0.0, last - t_start)
            # The work of an order goes on after its outcome (notification, analytics, commits):
            # records and CPU are both taken once the topics are quiet. The outcome reader
            # pauses meanwhile: its polls (one per OUTCOME_FETCH_WAIT_MS) are not the app's cost.
            consumer.pause(*consumer.assignment())
            offsets, quiet = await bk.settle(bench.bootstrap, target.app_id, timeout=args.settle_timeout)
            snapshots.append(offsets)
            settled.append(quiet)
            cpu1 = [procs.cpu_seconds(p) for p in pids]
            broker1 = procs.cpu_seconds(bench.broker_pid) if bench.broker_pid else None
            wall1 = time.monotonic()
            consumer.resume(*consumer.assignment())
            first = edge
        await bk.catch_up(consumer)  # outcomes that came while paused (a second one is a duplicate)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await collector
        bar.close()
        with contextlib.suppress(Exception):  # an error on the way is the one to report
            await consumer.stop()
            await prod.stop()
    wall = max(1e-9, wall1 - wall0)
    load = [round(x, 2) for x in os.getloadavg()]
    rss = {f"{target.engine}{i}": procs.rss_bytes(p) for i, p in enumerate(pids)}
    run: dict[str, Any] = {
        "name": target.name,
        "engine": target.engine,
        "guarantee": target.guarantee,
        "workers": target.workers,
        "app_id": target.app_id,
        "offered_rate": rate,
        "orders": total,
        "sent": len(tally.sent_at),
        "send_errors": tally.send_errors,
        "completed": len(tally.done_at),
        "missing": len(tally.sent_at) - len(tally.done_at),
        "ended": ended,
        "topics_went_quiet": settled,
        "outcomes": tally.outcomes(),
        "duplicates": tally.duplicates,
        "send_seconds": round(send_seconds, 3),
        "achieved_send_rate": round(len(tally.sent_at) / send_seconds, 1) if send_seconds > 0 else None,
        "duration_seconds": round(active, 3),
        "completed_per_s": round(len(tally.done_at) / active, 1) if active > 0 else None,
        "latency_ms": latency_ms(tally.latencies()),
        "cpu": cpu_figures(
            cpu0, cpu1, broker0, broker1, active or wall, len(tally.done_at), target.engine, driver_seconds
        ),
        "rss_mb": {k: round(v / 2**20, 1) for k, v in rss.items() if v is not None},
        # The machine's load average at the end: other work on the same cores skews every figure.
        "loadavg_1_5_15": load,
    }
    run.update(await produced(bench, target, snapshots, edges, tally))
    return run


async def warm_up(bench: Bench, target: Target, prod: Any, tally: bk.Tally) -> None:
    """Send ``--warmup`` orders flat out and wait for them, then forget them: first fetches are slow."""
    args = bench.args
    orders = bk.placed_orders(target.prefix, 0, args.warmup, products=args.products, lines=args.lines)
    await bk.send_orders(prod, target.input_topic, orders, None, tally)
    await prod.flush()
    ended = await wait_drained(tally, [o.order_id for o in orders], target, args)
    if ended != "complete":
        say(f"{target.name}: warm-up ended: {ended} ({len(tally.done_at)} of {len(orders)} warm-up orders completed)")
    tally.reset()


def cpu_figures(
    before: Sequence[float | None],
    after: Sequence[float | None],
    broker0: float | None,
    broker1: float | None,
    wall: float,
    completed: int,
    engine: str,
    driver: float | None = None,
) -> dict[str, Any]:
    """Return CPU seconds and milliseconds per completed order, for the processes, the broker and the driver.

    ``wall`` is the active time (first send to last outcome): cores used = CPU seconds ÷ it.
    ``driver`` is the benchmark's own CPU while it sent orders and read outcomes: it runs on
    the same cores, so it is part of what a configuration costs the machine.
    """
    deltas = [b - a for a, b in zip(before, after, strict=True) if a is not None and b is not None]
    worker = sum(deltas) if deltas else None
    broker = broker1 - broker0 if broker0 is not None and broker1 is not None else None

    def per(seconds: float | None) -> float | None:
        return round(seconds * 1000 / completed, 4) if seconds is not None and completed else None

    return {
        "process_label": "worker" if engine == "orderstream" else "ceiling",
        "worker_seconds": None if worker is None else round(worker, 3),
        "broker_seconds": None if broker is None else round(broker, 3),
        "worker_ms_per_order": per(worker),
        "broker_ms_per_order": per(broker),
        "driver_ms_per_order": per(driver),
        "worker_cores": None if worker is None else round(worker / wall, 3),
        "broker_cores": None if broker is None else round(broker / wall, 3),
        "active_seconds": round(wall, 3),
    }


async def produced(
    bench: Bench, target: Target, snapshots: list[dict[TopicPartition, int]], edges: list[int], tally: bk.Tally
) -> dict[str, Any]:
    """Count records, bytes and transaction markers the run produced, per topic and per window."""
    tps = sorted(set().union(*snapshots), key=lambda tp: (tp.topic, tp.partition))
    offsets = {tp: [s.get(tp, 0) for s in snapshots] for tp in tps}
    for e in offsets.values():  # a partition created mid-run starts at 0
        for i in range(1, len(e)):
            e[i] = max(e[i], e[i - 1])
    kinds = await bk.app_partitions(bench.bootstrap, target.app_id)
    unc = await bk.read_produced(bench.bootstrap, offsets, "read_uncommitted")
    com = (
        await bk.read_produced(bench.bootstrap, offsets, "read_committed")
        if target.guarantee == "exactly_once"
        else None
    )
    windows = len(snapshots) - 1
    confirmed_by_window = confirmed_per_window(tally, edges, target.prefix)
    per_topic_w: list[dict[str, dict[str, Any]]] = [{} for _ in range(windows)]
    for tp, e in offsets.items():
        for w in range(windows):
            entry = per_topic_w[w].setdefault(
                tp.topic,
                {"kind": kinds.get(tp, "other"), "records": 0, "bytes": 0, "offsets": 0, "markers": 0, "aborted": 0},
            )
            entry["offsets"] += e[w + 1] - e[w]
    for w in range(windows):
        for topic, entry in per_topic_w[w].items():
            entry["records"] = unc.records[(topic, w)]
            entry["bytes"] = unc.bytes[(topic, w)]
            entry["markers"] = max(0, entry["offsets"] - entry["records"])
            if com is not None:
                entry["aborted"] = max(0, entry["records"] - com.records[(topic, w)])
    per_topic: dict[str, dict[str, Any]] = {}
    for w in range(windows):
        for topic, entry in per_topic_w[w].items():
            acc = per_topic.setdefault(topic, {k: 0 for k in entry} | {"kind": entry["kind"]})
            for k, v in entry.items():
                if k != "kind":
                    acc[k] += v
    confirmed = sum(confirmed_by_window)
    summary = produced_summary(per_topic, confirmed, len(tally.done_at))
    summary["per_topic"] = {
        t: {
            **v,
            "records_per_order": round(v["records"] / confirmed, 2) if confirmed else None,
            "bytes_per_order": round(v["bytes"] / confirmed, 1) if confirmed else None,
        }
        for t, v in sorted(per_topic.items())
        if v["offsets"]
    }
    summary["unread_partitions"] = unc.incomplete
    out: dict[str, Any] = {"produced": summary}
    if bench.args.windows:
        out["windows"] = [
            {
                "first": (edges[w - 1] + 1) if w else 1,
                "last": edges[w],
                "confirmed": confirmed_by_window[w],
                **produced_summary(per_topic_w[w], confirmed_by_window[w]),
            }
            for w in range(windows)
        ]
    return out


def confirmed_per_window(tally: bk.Tally, edges: list[int], prefix: str) -> list[int]:
    """Return how many orders were confirmed in each window (orders are sent window by window)."""
    ordered = list(tally.sent_at)  # insertion order = send order
    out = []
    first = 0
    for edge in edges:
        out.append(sum(1 for o in ordered[first:edge] if tally.outcome.get(o) == "order.confirmed"))
        first = edge
    return out


# --- orderstream workers -----------------------------------------------------------------


async def http_json(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """Make one request; return (status, decoded JSON or None); status 0 when nothing answered."""
    try:
        async with session.request(method, url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(10)) as r:
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, None
    except (TimeoutError, aiohttp.ClientError):
        return 0, None


async def wait_ready(session: aiohttp.ClientSession, urls: list[str], workers: list[Any], timeout: float) -> None:
    """Wait until every worker answers ``/ready`` with 200 twice in a row, one second apart."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < 2:
        dead = [w for w in workers if w.poll() is not None]
        if dead:
            raise RuntimeError(f"a worker exited with code {dead[0].returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers were not all ready within {timeout:.0f} s")
        answers = await asyncio.gather(*(http_json(session, "GET", u + "/ready") for u in urls))
        streak = streak + 1 if all(s == 200 for s, _ in answers) else 0
        await asyncio.sleep(1.0 if streak else 0.5)


async def seed_stock(session: aiohttp.ClientSession, urls: list[str], prefix: str, args: argparse.Namespace) -> None:
    """Set every product's stock through ``PUT /inventory/{id}``, then wait until it shows."""
    token = os.environ.get("ORDERSTREAM_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    slots = asyncio.Semaphore(16)
    deadline = time.monotonic() + 90

    async def put(k: int) -> None:
        pid = bk.product_id(prefix, k)
        url = urls[k % len(urls)]
        async with slots:
            while True:
                status, body = await http_json(
                    session, "PUT", f"{url}/inventory/{pid}", {"on_hand": args.stock}, headers
                )
                if status in (200, 202):
                    break
                if time.monotonic() > deadline or status in (400, 401, 403, 404, 409, 422):
                    raise RuntimeError(f"PUT /inventory/{pid} answered {status}: {body}")
                await asyncio.sleep(0.3)
            while True:
                status, body = await http_json(session, "GET", f"{url}/inventory/{pid}")
                if status == 200 and isinstance(body, dict) and body.get("on_hand") == args.stock:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the stock of {pid} never showed (last answer {status}: {body})")
                await asyncio.sleep(0.2)

    await asyncio.gather(*(put(k) for k in range(args.products)))


async def run_orderstream(bench: Bench, guarantee: str, workers: int, rates: list[float | None]) -> None:
    """Start ``workers`` fresh workers under ``guarantee`` and measure them at every rate."""
    args = bench.args
    name = config_name("orderstream", guarantee, workers)
    app_id = f"{bench.run_id}{SHORT[guarantee]}{workers}w"
    # A flat-out burst queues orders longer than the default 30 s payment timeout; the bench
    # measures throughput, not the timeout path, so orders get time to finish (--worker-env overrides).
    extra = {"ORDERSTREAM_PAYMENT_TIMEOUT": f"{args.payment_timeout:g}"}
    extra.update(kv.split("=", 1) for kv in args.worker_env)
    env = procs.worker_env(
        app_id=app_id,
        broker=f"kafka://{bench.bootstrap}",
        guarantee=guarantee,
        commit_interval=args.commit_interval,
        partitions=args.partitions,
        extra=extra,
    )
    ports = [kafka_local.free_port() for _ in range(workers)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    started = []
    say(f"{name}: starting {workers} worker(s), app id {app_id}")
    for i, port in enumerate(ports):
        datadir = bench.workdir / app_id / f"w{i}"
        datadir.mkdir(parents=True, exist_ok=True)
        log = bench.workdir / app_id / f"w{i}.log"
        started.append(bench.reaper.spawn(procs.worker_command(port, datadir), env=env, log=log))
    target = Target(
        name=name,
        engine="orderstream",
        guarantee=guarantee,
        workers=workers,
        app_id=app_id,
        input_topic=f"{app_id}.orders",
        outcome_topic=f"{app_id}.orders",
        processes=started,
        prefix=app_id,
    )
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, urls, started, args.ready_timeout)
            await seed_stock(session, urls, app_id, args)
        for rate in rates:
            await record(bench, target, rate)
            if any(p.poll() is not None for p in started):
                break
    except Exception as exc:  # noqa: BLE001  # one failed configuration must not end the others
        logs = "\n".join(procs.log_tail(bench.workdir / app_id / f"w{i}.log", 8) for i in range(workers))
        say(f"{name}: failed: {exc}\n{logs}")
        bench.runs.append(failed_run(target, rates[0], str(exc)))
    finally:
        bench.reaper.end(started)


async def run_ceiling(bench: Bench, rates: list[float | None]) -> None:
    """Start the ceiling's processes and measure them at every rate."""
    args = bench.args
    prefix = f"{bench.run_id}ceil"
    await bk.create_topics(bench.bootstrap, ceiling_mod.topics(prefix), args.partitions)
    started = []
    ready_files = []
    for i in range(args.ceiling_processes):
        ready = bench.workdir / prefix / f"p{i}.ready"
        ready_files.append(ready)
        cmd = [
            sys.executable,
            "-m",
            "app.bench.ceiling",
            f"--bootstrap={bench.bootstrap}",
            f"--prefix={prefix}",
            f"--index={i}",
            f"--of={args.ceiling_processes}",
            f"--partitions={args.partitions}",
            f"--datadir={bench.workdir / prefix / f'p{i}'}",
            f"--commit-interval={args.commit_interval}",
            f"--ready-file={ready}",
        ]
        started.append(bench.reaper.spawn(cmd, env={**os.environ}, log=bench.workdir / prefix / f"p{i}.log"))
    target = Target(
        name=config_name("ceiling", "at_least_once", args.ceiling_processes),
        engine="ceiling",
        guarantee="at_least_once",
        workers=args.ceiling_processes,
        app_id=prefix,
        input_topic=ceiling_mod.hop_topic(prefix, 1),
        outcome_topic=ceiling_mod.hop_topic(prefix, ceiling_mod.HOPS + 1),
        processes=started,
        prefix=prefix,
    )
    try:
        deadline = time.monotonic() + 60
        while not all(f.exists() for f in ready_files):
            if any(p.poll() is not None for p in started) or time.monotonic() > deadline:
                raise RuntimeError(
                    "the ceiling processes did not start: " + procs.log_tail(ready_files[0].parent / "p0.log")
                )
            await asyncio.sleep(0.2)
        for rate in rates:
            await record(bench, target, rate)
    except Exception as exc:  # noqa: BLE001  # the configurations still run without a ceiling
        say(f"ceiling: failed: {exc}")
        bench.runs.append(failed_run(target, rates[0], str(exc)))
    finally:
        bench.reaper.end(started)


def failed_run(target: Target, rate: float | None, error: str) -> dict[str, Any]:
    """Return the report entry of a configuration that could not be measured."""
    return {
        "name": target.name,
        "engine": target.engine,
        "guarantee": target.guarantee,
        "workers": target.workers,
        "offered_rate": rate,
        "error": error,
    }


async def record(bench: Bench, target: Target, rate: float | None) -> None:
    """Measure once, attach the ratios to the ceiling, print and keep the result."""
    run = await measure(bench, target, rate)
    base = ceiling_for(bench.runs, rate)
    if target.engine != "ceiling":
        run["vs_ceiling"] = vs_ceiling(run, base)
    problems = check_run(run)
    if problems:
        run["problems"] = problems
    bench.runs.append(run)
    say("\n".join(run_lines(run, base if target.engine != "ceiling" else None)))


# --- the whole run ---------------------------------------------------------------------------


def report(bench: Bench, interrupted: bool = False) -> dict[str, Any]:
    """Return the JSON report."""
    a = bench.args
    return {
        "kind": "orderstream-bench",
        "version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "interrupted": interrupted,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "broker": {
            "bootstrap": bench.bootstrap,
            "started_by_bench": bench.cluster is not None,
            "pid": bench.broker_pid,
        },
        "settings": {
            "orders": a.orders,
            "ceiling_orders": a.ceiling_orders,
            "rates": [r for r in a.rates],
            "guarantees": a.guarantees,
            "workers": a.workers,
            "lines": a.lines,
            "products": a.products,
            "stock": a.stock,
            "partitions": a.partitions,
            "commit_interval": a.commit_interval,
            "payment_timeout": a.payment_timeout,
            "worker_env": a.worker_env,
            "windows": a.windows,
            "ceiling_processes": a.ceiling_processes,
        },
        "runs": bench.runs,
    }


async def run_all(bench: Bench) -> None:
    """Run the ceiling, then every configuration."""
    args = bench.args
    if args.ceiling_processes > 0:
        await run_ceiling(bench, args.rates)
    for guarantee in [] if args.ceiling_only else args.guarantees:
        for workers in args.workers:
            await run_orderstream(bench, guarantee, workers, args.rates)


def start_broker(bench: Bench) -> None:
    """Use ``ORDERSTREAM_BROKER`` when set, else start a local KRaft broker for this run."""
    given = bench.args.broker or os.environ.get("ORDERSTREAM_BROKER", "")
    if given:
        bench.bootstrap = given.split("://", 1)[-1].split(",")[0]
        port = int(bench.bootstrap.rsplit(":", 1)[1])
        bench.broker_pid = bench.args.broker_pid or procs.find_broker_pid(port)
        if bench.broker_pid is None:
            say(f"broker {bench.bootstrap}: its JVM was not found on this machine; no broker CPU figures")
        return
    say("starting a local Kafka broker...")
    bench.cluster = kafka_local.start(
        port=kafka_local.free_port(2), nodes=1, data_dir=bench.workdir / "kafka", owner_pid=os.getpid()
    )
    bench.bootstrap = bench.cluster.bootstrap
    pids = bench.cluster.pids()
    bench.broker_pid = pids[0] if pids else None


def plot(report_: dict[str, Any], path: Path) -> None:
    """Draw completed orders/s and p99 latency against the offered rate, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ok = [r for r in report_["runs"] if not r.get("error")]
    # Offered rates as categories, numbers ascending then "max": flat-out runs share one column.
    rates = sorted({r["offered_rate"] for r in ok}, key=lambda v: (v is None, v or 0))
    column = {rate: i for i, rate in enumerate(rates)}
    for name in dict.fromkeys(r["name"] for r in ok):
        runs = sorted((r for r in ok if r["name"] == name), key=lambda r: column[r["offered_rate"]])
        x = [column[r["offered_rate"]] for r in runs]
        style = "--" if runs[0]["engine"] == "ceiling" else "-"
        ax1.plot(x, [r["completed_per_s"] or 0 for r in runs], style, marker="o", label=name)
        ax2.plot(x, [r["latency_ms"]["p99"] or float("nan") for r in runs], style, marker="o", label=name)
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(rates)), [rate_label(r) for r in rates])
        ax.set_xlabel("offered orders/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set(title="completed orders/s", ylabel="orders/s")
    ax2.set(title="p99 placed→final", ylabel="ms")
    ax1.set_yscale("log")  # the ceiling and today's workers differ by orders of magnitude
    ax2.set_yscale("log")
    fig.suptitle(f"orderstream bench {report_['created_at']} ({report_['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=10_000, help="orders per configuration and rate (default 10000)")
    p.add_argument("--rates", default="max", help="offered rates, e.g. 500,1000,2000,max (default max)")
    p.add_argument("--guarantees", default=",".join(GUARANTEES), help="at_least_once,exactly_once (default both)")
    p.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    p.add_argument("--lines", type=int, default=1, help="lines per order (default 1)")
    p.add_argument("--products", type=int, default=100, help="distinct products the lines spread over (default 100)")
    p.add_argument("--stock", type=int, default=100_000_000, help="units on hand set per product (default 1e8)")
    p.add_argument("--partitions", type=int, default=8, help="partitions of every topic (default 8)")
    p.add_argument("--commit-interval", type=float, default=0.1, help="ORDERSTREAM_COMMIT_INTERVAL (default 0.1)")
    p.add_argument("--windows", default="", help="order counts closing each window, e.g. 1000,10000,100000")
    p.add_argument("--warmup", type=int, default=100, help="orders sent and awaited before measuring (default 100)")
    p.add_argument(
        "--ceiling-orders",
        type=int,
        default=0,
        help="orders per ceiling run (default: --orders, at least 20000: a short burst measures only its start)",
    )
    p.add_argument("--ceiling-processes", type=int, default=2, help="processes of the ceiling; 0 skips it")
    p.add_argument("--no-ceiling", dest="ceiling_processes", action="store_const", const=0, help="skip the ceiling")
    p.add_argument("--ceiling-only", action="store_true", help="measure only the ceiling")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="give up after this many s without an outcome")
    p.add_argument("--run-timeout", type=float, default=900.0, help="give up a run's drain after this many s")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds for the workers to become ready")
    p.add_argument("--settle-timeout", type=float, default=120.0, help="seconds to wait for the topics to go quiet")
    p.add_argument("--broker", default="", help="use this broker (kafka://host:port); else ORDERSTREAM_BROKER or own")
    p.add_argument("--broker-pid", type=int, default=0, help="pid of that broker's JVM for CPU figures")
    p.add_argument(
        "--payment-timeout",
        type=float,
        default=3600.0,
        help="the workers' ORDERSTREAM_PAYMENT_TIMEOUT: a backlog must not turn into cancellations (default 3600)",
    )
    p.add_argument("--worker-env", action="append", default=[], help="extra worker environment, KEY=VALUE")
    p.add_argument("--workdir", default="", help="data and logs (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the data and logs after the run")
    p.add_argument("--output", default="bench.json", help="JSON report path ('' for none)")
    p.add_argument("--plot", default="bench.png", help="PNG path ('' for none)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    try:
        args.rates = parse_rates(args.rates)
        args.windows = parse_windows(args.windows) if args.windows else []
    except ValueError as exc:
        p.error(str(exc))
    args.guarantees = [g.strip() for g in args.guarantees.split(",") if g.strip()]
    if not args.guarantees or any(g not in GUARANTEES for g in args.guarantees):
        p.error(f"--guarantees takes {', '.join(GUARANTEES)}")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error("--workers takes numbers, e.g. 1,2")
    if not args.workers or any(w < 1 for w in args.workers):
        p.error("--workers takes positive numbers, e.g. 1,2")
    if any("=" not in kv for kv in args.worker_env):
        p.error("--worker-env takes KEY=VALUE")
    if args.windows:
        args.orders = args.windows[-1]
    args.ceiling_orders = args.ceiling_orders or max(args.orders, 20_000)
    if min(args.orders, args.lines, args.products, args.partitions) < 1:
        p.error("--orders, --lines, --products and --partitions must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a run failed or missed orders, 130 when interrupted."""
    args = parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="orderstream-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # aiokafka logs transient metadata errors of fresh topics; keep them out of the terminal.
    logging.basicConfig(filename=workdir / "bench.log", level=logging.WARNING)
    run_id = "bn" + os.urandom(3).hex()
    bench = Bench(args=args, workdir=workdir, run_id=run_id)
    # Explicit handlers: a bench started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    interrupted = False
    try:
        start_broker(bench)
        say(f"broker {bench.bootstrap}; data and logs in {workdir}")
        asyncio.run(run_all(bench))
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping every process this run started")
    except kafka_local.KafkaLocalError as exc:
        say(f"error: {exc.message}\n{exc.details}")
        bench.close()
        return 2
    finally:
        bench.close()
    result = report(bench, interrupted)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
        say(f"report written to {args.output}")
    if args.plot and any(not r.get("error") for r in result["runs"]):
        plot(result, Path(args.plot))
        say(f"plot written to {args.plot}")
    print(summary_text(result))
    if interrupted:
        return 130
    bad = [r for r in result["runs"] if r.get("error") or r.get("missing")]
    return 1 if bad else 0


def summary_text(result: dict[str, Any]) -> str:
    """Render every run of the report, each figure with its ratio to the ceiling."""
    lines = [f"orderstream bench, {result['machine']['cpus']} CPUs, broker {result['broker']['bootstrap']}"]
    for run in result["runs"]:
        if run.get("error"):
            lines.append(f"{run['name']}: ERROR {run['error']}")
            continue
        base = None if run["engine"] == "ceiling" else ceiling_for(result["runs"], run["offered_rate"])
        lines.extend(run_lines(run, base))
    return "\n".join(lines)
