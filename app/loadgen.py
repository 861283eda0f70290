"""Place orders at a steady rate against one or more workers and report what happened.

    python -m app.loadgen --url http://127.0.0.1:6066 --orders 1000 --rate 100 --mix cards

First every product's stock is set (``PUT /inventory/{id}``). Then order ``i`` is
posted ``i / rate`` seconds after the start: an open schedule, so a slow answer
never delays the orders behind it. Each POST carries an ``Idempotency-Key``, so a
retried POST never places a second order, and each order is long-polled with
``GET /orders/{id}?wait=`` until it reaches a final state. End-to-end latency runs
from the start of the POST to the moment the final status is seen; the server-side
latency is the order's ``updated_at - created_at``.

With ``--open-loop`` the figures are not capped by the generator's own concurrency:
every POST starts on its schedule whatever is in flight (``--concurrency`` then bounds
only the POSTs, unbounded by default), latency runs from the scheduled start, and
outcomes are collected apart from the POSTs: one long-poll per order started after its
POST (bounded by ``--poll-concurrency``), or, with ``--broker`` and ``--app-id``, read
from the orders topic with a ``read_committed`` consumer, which costs the workers nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import aiohttp
from tqdm import tqdm

from app.bench.stats import percentile
from app.domain.common import FINAL_STATUSES, from_cents

DEFAULT_URL = "http://127.0.0.1:6066"
OK_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
INSUFFICIENT_FUNDS_CARD = "4000000000009995"
FLAKY_CARD = "4000000000000119"

#: Card mixes by name: (card number, weight). The hanging card is left out on purpose:
#: its orders only end after the gateway timeout and would dominate the latency.
CARD_MIXES: dict[str, tuple[tuple[str, float], ...]] = {
    "ok": ((OK_CARD, 1.0),),
    "cards": ((OK_CARD, 0.80), (DECLINED_CARD, 0.05), (INSUFFICIENT_FUNDS_CARD, 0.05), (FLAKY_CARD, 0.10)),
}
USERS = 100
POLL_WAIT = 10.0  # seconds per long-poll; the server caps ?wait= at 30
RETRIES = 5
PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,40}$")


class LoadgenError(Exception):
    """The run cannot go on (e.g. the stock could not be set)."""


# --- pure helpers -------------------------------------------------------------------


def schedule(n: int, rate: float) -> list[float]:
    """Return when each of ``n`` orders starts, in seconds after the first, at ``rate`` per second."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    return [i / rate for i in range(n)]


def choose_card(rng: random.Random, mix: str) -> str:
    """Pick a test card number from the named mix."""
    cards, weights = zip(*CARD_MIXES[mix], strict=True)
    return rng.choices(cards, weights)[0]


def product_id(prefix: str, k: int) -> str:
    """Return the id of product number ``k``."""
    return f"{prefix}-p{k:03d}"


def price_cents(k: int) -> int:
    """Return product ``k``'s unit price in cents, between 1.00 and 49.99."""
    return 100 + (k * 737) % 4900


def order_body(
    rng: random.Random, i: int, prefix: str, products: int, items_max: int, card: str, today: date
) -> dict[str, Any]:
    """Build the ``POST /orders`` body of order ``i``: 1..items_max distinct products, one unit each."""
    user = f"{prefix}-u{i % USERS:02d}"
    picks = sorted(rng.sample(range(products), rng.randint(1, min(items_max, products))))
    return {
        "user_id": user,
        "user_email": f"{user}@example.com",
        "currency": "USD",
        "items": [
            {"product_id": product_id(prefix, k), "quantity": 1, "price": from_cents(price_cents(k))} for k in picks
        ],
        "payment": {"method": "card", "card_number": card, "expiry": f"12/{(today.year + 3) % 100:02d}", "cvv": "123"},
    }


def server_seconds(view: dict[str, Any]) -> float | None:
    """Return ``updated_at - created_at`` of an order view in seconds, if both parse."""
    try:
        return (datetime.fromisoformat(view["updated_at"]) - datetime.fromisoformat(view["created_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class Outcome:
    """What happened to one order; times are seconds since the run started."""

    index: int
    post_start: float | None = None
    lag: float = 0.0  # how late the POST started against its schedule
    order_id: str | None = None
    accepted_at: float | None = None
    final_at: float | None = None
    status: str | None = None  # the last status seen
    reason: str | None = None
    server_latency: float | None = None


def _latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ms = [s * 1000 for s in seconds]
    return {
        "p50": round(percentile(ms, 50), 1),
        "p95": round(percentile(ms, 95), 1),
        "p99": round(percentile(ms, 99), 1),
        "max": round(max(ms), 1),
    }


def _per_second(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def summarize(outcomes: Sequence[Outcome], errors: dict[str, int]) -> dict[str, Any]:
    """Turn the per-order outcomes into the report (counts, rates, latency percentiles)."""
    started = [o.post_start for o in outcomes if o.post_start is not None]
    placed = [o for o in outcomes if o.accepted_at is not None]
    done = [o for o in placed if o.final_at is not None]
    first = min(started, default=0.0)
    placing = max((o.accepted_at for o in placed if o.accepted_at is not None), default=first) - first
    duration = max((o.final_at for o in done if o.final_at is not None), default=first) - first
    e2e = [o.final_at - o.post_start for o in done if o.final_at is not None and o.post_start is not None]
    server = [o.server_latency for o in done if o.server_latency is not None]
    return {
        "orders": len(outcomes),
        "placed": len(placed),
        "not_placed": len(outcomes) - len(placed),
        "completed": len(done),
        "unfinished": dict(Counter(o.status or "unknown" for o in placed if o.final_at is None)),
        "placement_seconds": round(placing, 3),
        "accepted_per_s": _per_second(len(placed), placing),
        "duration_seconds": round(duration, 3),
        "completed_per_s": _per_second(len(done), duration),
        "max_schedule_lag_ms": round(max((o.lag for o in outcomes), default=0.0) * 1000, 1),
        "latency_ms": _latency_ms(e2e),
        "server_latency_ms": _latency_ms(server),
        "outcomes": dict(Counter(o.status for o in done).most_common()),
        "reasons": dict(Counter(f"{o.status}: {o.reason}" for o in done if o.reason).most_common()),
        "errors": dict(sorted(errors.items())),
    }


def format_report(report: dict[str, Any]) -> str:
    """Render the report for a terminal."""

    def ms(stats: dict[str, float | None]) -> str:
        return "  ".join(f"{k} {'-' if v is None else f'{v:.1f} ms'}" for k, v in stats.items())

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    def rate(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}/s"

    target = f"target {rate(report['target_rate'])}, " if "target_rate" in report else ""

    return "\n".join(
        [
            f"orders      {report['placed']} placed of {report['orders']} ({report['not_placed']} not placed), "
            f"{report['completed']} completed",
            f"placement   {rate(report['accepted_per_s'])} accepted over {report['placement_seconds']:.1f} s "
            f"({target}max lag {report['max_schedule_lag_ms']:.0f} ms)",
            f"throughput  {rate(report['completed_per_s'])} completed over {report['duration_seconds']:.1f} s",
            f"latency     {ms(report['latency_ms'])}",
            f"server      {ms(report['server_latency_ms'])}",
            f"outcomes    {counts(report['outcomes'])}",
            f"reasons     {counts(report['reasons'])}",
            f"unfinished  {counts(report['unfinished'])}",
            f"errors      {counts(report['errors'])}",
        ]
    )


# --- the run ------------------------------------------------------------------------


class Client:
    """HTTP calls with bounded concurrency; every failure is counted, none is raised."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        concurrency: int,
        admin_token: str | None,
        poll_concurrency: int | None = None,
    ) -> None:
        self.session = session
        self.slots: asyncio.Semaphore | contextlib.nullcontext[None] = (
            asyncio.Semaphore(concurrency) if concurrency > 0 else contextlib.nullcontext()
        )
        # Long-polls get slots of their own when given: a slow outcome never holds back a POST.
        self.poll_slots = asyncio.Semaphore(poll_concurrency) if poll_concurrency else self.slots
        self.admin = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.errors: Counter[str] = Counter()

    async def call(
        self,
        method: str,
        url: str,
        label: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        ok: tuple[int, ...] = (200, 202),
        poll: bool = False,
    ) -> tuple[int, Any]:
        """Return (status, JSON body); status 0 when no answer came. Statuses not in ``ok`` count as errors."""
        try:
            async with (
                self.poll_slots if poll else self.slots,
                self.session.request(
                    method, url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp,
            ):
                status = resp.status
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.errors[f"{label} {type(exc).__name__}"] += 1
            return 0, None
        if status not in ok:
            self.errors[f"{label} {status}"] += 1
        return status, data

    async def call_with_retries(self, method: str, url: str, label: str, **kwargs: Any) -> tuple[int, Any]:
        """Like :meth:`call`, retrying no answer, 429 and 5xx with backoff."""
        for attempt in range(RETRIES):
            status, data = await self.call(method, url, label, **kwargs)
            if status and status != 429 and status < 500:
                break
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        return status, data


class LoadRun:
    """One run: set the stock, place and follow every order, then summarize."""

    def __init__(self, args: argparse.Namespace, client: Client) -> None:
        self.args = args
        self.client = client
        self.urls: list[str] = [u.rstrip("/") for u in args.url]
        self.t0 = time.monotonic()
        self.bar: Any = None
        self.placed = 0
        self.kafka: KafkaOutcomes | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def url(self, i: int, path: str) -> str:
        return self.urls[i % len(self.urls)] + path

    async def set_stock(self) -> None:
        """PUT every product's stock, then wait until the workers report it."""
        args = self.args

        async def put(k: int) -> None:
            pid = product_id(args.prefix, k)
            status, data = await self.client.call_with_retries(
                "PUT",
                self.url(k, f"/inventory/{pid}"),
                "PUT /inventory",
                body={"on_hand": args.stock},
                headers=self.client.admin,
            )
            if status != 202:
                detail = data.get("message") if isinstance(data, dict) else None
                raise LoadgenError(
                    f"could not set the stock of {pid}: HTTP {status or 'no answer'} {detail or ''}".rstrip()
                )

        async def applied(k: int) -> bool:
            status, data = await self.client.call(
                "GET", self.url(k, f"/inventory/{product_id(args.prefix, k)}"), "GET /inventory"
            )
            return status == 200 and isinstance(data, dict) and data.get("on_hand") == args.stock

        await asyncio.gather(*(put(k) for k in range(args.products)))
        deadline = time.monotonic() + 30
        waiting = list(range(args.products))
        while waiting and time.monotonic() < deadline:
            results = await asyncio.gather(*(applied(k) for k in waiting))
            waiting = [k for k, ok in zip(waiting, results, strict=True) if not ok]
            if waiting:
                await asyncio.sleep(0.2)
        if waiting:
            print(
                f"warning: {len(waiting)} products do not show the new stock yet; placing orders anyway",
                file=sys.stderr,
            )

    async def place_and_follow(self, outcome: Outcome, body: dict[str, Any], scheduled: float | None = None) -> None:
        """POST one order, then follow it until it is final (long-poll, or the Kafka outcomes)."""
        i = outcome.index
        # Open loop: latency runs from the scheduled start, so a late start is not hidden.
        outcome.post_start = self.now() if scheduled is None else scheduled
        headers = {"Idempotency-Key": f"{self.args.prefix}-{i}"}
        status, data = await self.client.call_with_retries(
            "POST", self.url(i, "/orders"), "POST /orders", body=body, headers=headers
        )
        if status != 202 or not isinstance(data, dict) or "order_id" not in data:
            self._done()
            return
        outcome.accepted_at = self.now()
        self.placed += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"placed {self.placed}", refresh=False)
        outcome.order_id = str(data["order_id"])
        outcome.status = str(data.get("status", "pending"))
        if self.kafka is not None:
            await self.kafka.follow(outcome, self.t0)
            self._done()
            return
        url = self.url(i, f"/orders/{outcome.order_id}?wait={POLL_WAIT:g}")
        while True:
            status, view = await self.client.call(
                "GET", url, "GET /orders/{id}", timeout=POLL_WAIT + 15, poll=self.args.open_loop
            )
            if status == 200 and isinstance(view, dict):
                outcome.status = view.get("status")
                if outcome.status in FINAL_STATUSES:
                    outcome.final_at = self.now()
                    outcome.reason = view.get("reason")
                    outcome.server_latency = server_seconds(view)
                    self._done()
                    return
            elif status != 404:  # 404 after a long-poll: not visible yet, ask again at once
                await asyncio.sleep(0.5)

    def _done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    async def run(self) -> dict[str, Any]:
        args = self.args
        await self.set_stock()
        rng = random.Random(args.seed)
        today = date.today()
        outcomes = [Outcome(i) for i in range(args.orders)]
        tasks: list[asyncio.Task[None]] = []
        with tqdm(total=args.orders, unit="order", desc="completed", disable=None if args.progress else True) as bar:
            self.bar = bar
            self.t0 = time.monotonic()
            for outcome, start in zip(outcomes, schedule(args.orders, args.rate), strict=True):
                delay = start - self.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                outcome.lag = max(0.0, -delay)
                body = order_body(
                    rng, outcome.index, args.prefix, args.products, args.items_max, choose_card(rng, args.mix), today
                )
                scheduled = start if args.open_loop else None
                tasks.append(asyncio.create_task(self.place_and_follow(outcome, body, scheduled)))
            _, pending = await asyncio.wait(tasks, timeout=args.timeout) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return summarize(outcomes, dict(self.client.errors))


class KafkaOutcomes:
    """Outcomes read from the orders topic (``read_committed``) instead of long-polls."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from app.bench import kafka as bench_kafka  # aiokafka only when asked for

        self._kafka = bench_kafka
        self.bootstrap = bootstrap
        self.topic = topic
        self.tally = bench_kafka.Tally(keep_early=True)
        self.stop = asyncio.Event()
        self.consumer: Any = None
        self.task: asyncio.Task[None] | None = None
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.tally.on_outcome = self._arrived

    def _arrived(self, order_id: str) -> None:
        waiter = self.waiting.pop(order_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def start(self) -> None:
        """Position the consumer at the end of the orders topic and start reading."""
        self.consumer = await self._kafka.outcome_consumer(self.bootstrap, self.topic)
        self.task = asyncio.create_task(self._kafka.collect_outcomes(self.consumer, self.tally, self.stop))

    async def follow(self, outcome: Outcome, t0: float) -> None:
        """Wait until ``outcome``'s order has a final event; fill in its time and status."""
        order_id = str(outcome.order_id)
        waiter = self.waiting[order_id] = asyncio.get_running_loop().create_future()
        self.tally.expect(order_id, time.monotonic())  # resolves the waiter if the outcome came first
        try:
            await waiter
        finally:
            self.waiting.pop(order_id, None)
        outcome.final_at = self.tally.done_at[order_id] - t0
        outcome.status = self.tally.outcome[order_id].split(".", 1)[1]

    async def close(self) -> None:
        """Stop reading."""
        self.stop.set()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the load described by ``args`` (see :func:`parse_args`) and return the report."""
    connector = aiohttp.TCPConnector(limit=0 if args.open_loop else args.concurrency, limit_per_host=0)
    post_slots = (args.concurrency or 0) if args.open_loop else args.concurrency
    poll_slots = args.poll_concurrency if args.open_loop else None
    async with aiohttp.ClientSession(connector=connector) as session:
        load = LoadRun(args, Client(session, post_slots, args.admin_token, poll_slots))
        if args.broker:
            load.kafka = KafkaOutcomes(args.broker.split("://", 1)[-1], f"{args.app_id}.orders")
            await load.kafka.start()
        try:
            report = await load.run()
        finally:
            if load.kafka is not None:
                await load.kafka.close()
    config = {"urls": args.url, "prefix": args.prefix, "mix": args.mix, "products": args.products, "stock": args.stock}
    mode = {"open_loop": args.open_loop, "outcomes_from": "kafka" if args.broker else "long-poll"}
    return {**config, **mode, "target_rate": args.rate, **report}


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _prefix(text: str) -> str:
    if not PREFIX.match(text):
        raise argparse.ArgumentTypeError("must be 1-41 letters, digits or ._:- characters")
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m app.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", action="append", help=f"a worker's base URL; repeat to spread load (default {DEFAULT_URL})")
    p.add_argument("--orders", type=_positive(int), default=1000, help="orders to place (default 1000)")
    p.add_argument("--rate", type=_positive(float), default=100.0, help="orders per second (default 100)")
    p.add_argument("--products", type=_positive(int), default=20, help="distinct products (default 20)")
    p.add_argument(
        "--stock", type=int, default=1000, help="units on hand per product, set before starting (default 1000)"
    )
    p.add_argument("--admin-token", default=None, help="Bearer token for PUT /inventory, if the workers require one")
    p.add_argument("--prefix", type=_prefix, default=None, help="product and user id prefix (default: random)")
    p.add_argument(
        "--mix", choices=sorted(CARD_MIXES), default="ok", help="ok: every card charged; cards: test-card mix"
    )
    p.add_argument("--items-max", type=_positive(int), default=1, help="at most this many lines per order (default 1)")
    p.add_argument(
        "--concurrency",
        type=_positive(int),
        default=None,
        help="max requests in flight (default 64; with --open-loop: POSTs only, unbounded by default)",
    )
    p.add_argument(
        "--open-loop",
        action="store_true",
        help="start every POST on schedule whatever is in flight; follow outcomes apart from the POSTs",
    )
    p.add_argument(
        "--poll-concurrency",
        type=_positive(int),
        default=4096,
        help="with --open-loop: long-polls in flight at once (default 4096)",
    )
    p.add_argument(
        "--broker",
        default=None,
        help="read outcomes from this broker's orders topic (kafka://host:port) instead of long-polls",
    )
    p.add_argument("--app-id", default=None, help="the workers' ORDERSTREAM_APP_ID (topic prefix), with --broker")
    p.add_argument("--timeout", type=_positive(float), default=120.0, help="seconds to wait for outcomes after placing")
    p.add_argument("--seed", type=int, default=None, help="seed for the product and card choices")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    if args.stock < 0:
        p.error("--stock must be zero or more")
    if args.broker and not args.app_id:
        p.error("--broker needs --app-id (the topic prefix of the workers)")
    if not args.open_loop and args.concurrency is None:
        args.concurrency = 64
    args.url = args.url or [DEFAULT_URL]
    args.prefix = args.prefix or f"lg{secrets.token_hex(3)}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line; exit 1 when no order completed, 2 when the run could not start."""
    args = parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except LoadgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["completed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
