"""Rebuild the read models (orders, stock, analytics) from the event topics.

    faust -A app rebuild [--compare URL] [--output FILE] [--no-progress]
    python -m app.rebuild [--compare URL] [--output FILE] [--no-progress]

Reads ``{app_id}.orders`` and ``{app_id}.inventory`` from the beginning to their
current (last stable) end with ``read_committed``, under a fresh consumer group that
commits nothing, so it never disturbs the workers. Then, without any table:

- **orders**: each order's messages, deduplicated by envelope id, in topic order, go
  through :func:`app.domain.orders.decide` exactly as the live saga applies them;
  the result is rendered with :func:`app.domain.orders.to_view`.
- **stock**: ``inventory.restocked`` deltas plus every order line's
  ``inventory.reserved`` / ``released`` / ``committed``, with the inventory
  stage's one-record-per-reservation rule (a line is reserved once, then released
  or committed once), rendered with :func:`app.domain.inventory.to_view`.
- **analytics**: the ``analytics.record`` payload the saga emits when it confirms
  an order, counted once the analytics stage recorded it (its
  ``analytics.order_recorded`` is on the orders topic), exactly what the live
  partials hold; plus orders by status. Rendered with
  :func:`app.domain.analytics.summary`.

``--compare`` fetches the same models from a running worker's API and prints every
difference (exit status 1 when there is any); ``--output`` writes the rebuilt models
as JSON. The last line on stdout is ``rebuilt N orders, M products from K events``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from app.admin import bootstrap_servers
from app.domain import analytics as analytics_domain
from app.domain import inventory as inventory_domain
from app.domain import orders as orders_domain
from app.domain.common import ANALYTICS, INVENTORY, ORDERS
from schemas.registry import read as decode
from schemas.envelope import Envelope

#: The topics the read models are rebuilt from (logical names).
SOURCES = (ORDERS, INVENTORY)
LINE_EVENTS = frozenset({"inventory.reserved", "inventory.rejected", "inventory.released", "inventory.committed"})


class RebuildError(Exception):
    """The rebuild cannot run (no such topic, broker unreachable, reading stalled)."""


class Message(NamedTuple):
    """One message as read from a topic: its key (text) and its JSON-decoded value (``None`` if unreadable)."""

    key: str | None
    value: Any


@dataclass
class Models:
    """The rebuilt read models, as the API renders them, and what went into them."""

    orders: dict[str, dict[str, Any]]
    stock: dict[str, dict[str, Any]]
    analytics: dict[str, Any]
    stats: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the models as one JSON-ready dict (orders and products sorted by id)."""
        return {
            "orders": dict(sorted(self.orders.items())),
            "stock": dict(sorted(self.stock.items())),
            "analytics": self.analytics,
            "stats": self.stats,
        }

    def count_line(self) -> str:
        """Return the final one-line count."""
        events = self.stats.get("events", 0)
        return f"rebuilt {len(self.orders)} orders, {len(self.stock)} products from {events} events"


# --- the pure core ------------------------------------------------------------------


def _decode(value: Any, topic: str) -> Envelope | None:
    """Read a message value as the stage of ``topic`` does, or return ``None`` where the stage dead-letters it."""
    if value is None:
        return None
    try:
        return decode(value, topic)
    except Exception:  # noqa: BLE001 - the stage dead-letters whatever it cannot read; so does the rebuild
        return None


def _messages(items: Iterable[Any]) -> Iterable[Message]:
    for item in items:
        if isinstance(item, Message):
            yield item
        elif isinstance(item, tuple):
            yield Message(*item)
        else:
            yield Message(None, item)  # a bare envelope: its correlation id names the order


@dataclass
class _Stock:
    """Per-product stock and per-(product, order) reservations, as the inventory stage keeps them."""

    stock: dict[str, inventory_domain.Stock] = field(default_factory=dict)
    reservations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    ignored: int = 0

    def _of(self, product_id: str) -> inventory_domain.Stock:
        return self.stock.setdefault(product_id, inventory_domain.empty_stock())

    def restocked(self, env: Envelope, key: str | None) -> None:
        product_id = str(env["payload"].get("product_id") or key or env["entity_id"])
        s = self._of(product_id)
        s["on_hand"] += int(env["payload"]["delta"])

    def line(self, env: Envelope) -> None:
        p = env["payload"]
        product_id, order_id, qty = str(p["product_id"]), str(p["order_id"]), int(p["quantity"])
        rkey = (product_id, order_id)
        reservation = self.reservations.get(rkey)
        type_ = env["type"]
        if type_ in ("inventory.reserved", "inventory.rejected"):
            if reservation is not None:
                self.ignored += 1  # this order already has its answer for this product
                return
            state = "reserved" if type_ == "inventory.reserved" else "rejected"
            self.reservations[rkey] = {"state": state, "quantity": qty}
            if state == "reserved":
                self._of(product_id)["reserved"] += qty
            return
        if reservation is None or reservation["state"] != "reserved":
            self.ignored += 1  # only a reserved line can be released or committed, once
            return
        qty = int(reservation["quantity"])
        s = self._of(product_id)
        s["reserved"] -= qty
        if type_ == "inventory.committed":
            s["on_hand"] -= qty
            s["sold"] += qty
            reservation["state"] = "committed"
        else:
            reservation["state"] = "released"


def _fresh(events_by_topic: Any, topic: str, stats: Counter[str]) -> Iterator[tuple[Any, Envelope]]:
    """Yield each readable message of ``topic`` once per envelope id, counting the rest."""
    seen: set[str] = set()
    for msg in _messages(events_by_topic.get(topic, ())):
        stats["messages"] += 1
        env = _decode(msg.value, topic)
        if env is None:
            stats["unreadable"] += 1
            continue
        if env["id"] in seen:
            stats["duplicates"] += 1
            continue
        seen.add(env["id"])
        stats["events"] += 1
        yield msg, env


def rebuild(events_by_topic: Mapping[str, Iterable[Any]], payment_timeout: float = 30.0) -> Models:
    """Rebuild orders, stock and analytics from the messages of the orders and inventory topics.

    ``events_by_topic`` maps the logical topic name (``"orders"``, ``"inventory"``) to
    its messages in topic order (per partition): :class:`Message` / ``(key, value)``
    pairs, or bare envelope dicts. Duplicates (same envelope id) count once;
    unreadable messages are skipped, as the stages dead-letter them.
    """
    stats: Counter[str] = Counter()
    states: dict[str, orders_domain.OrderState] = {}
    to_record: dict[str, dict[str, Any]] = {}
    recorded: set[str] = set()
    stock = _Stock()

    for msg, env in _fresh(events_by_topic, ORDERS, stats):
        order_id = msg.key or env["correlation_id"]
        type_ = env["type"]
        if type_ in LINE_EVENTS:
            try:
                stock.line(env)
            except (KeyError, TypeError, ValueError):
                stats["unreadable"] += 1
        elif type_ == "analytics.order_recorded":
            recorded.add(str(env["payload"].get("order_id") or order_id))
        try:
            decision = orders_domain.decide(states.get(order_id), env, payment_timeout)
        except (KeyError, TypeError, ValueError):
            stats["dead_lettered"] += 1  # the saga retries, then dead-letters it: the order is unchanged
            continue
        if decision.state is None:
            continue
        states[order_id] = decision.state
        for emit in decision.emits:
            if emit.topic == ANALYTICS and emit.type == "analytics.record":
                to_record[emit.key] = emit.payload

    for msg, env in _fresh(events_by_topic, INVENTORY, stats):
        if env["type"] == "inventory.restocked":
            try:
                stock.restocked(env, msg.key)
            except (KeyError, TypeError, ValueError):
                stats["unreadable"] += 1

    partial = analytics_domain.empty_partial()
    for order_id in sorted(recorded & set(to_record)):
        partial = analytics_domain.record(partial, to_record[order_id])
    by_status = analytics_domain.merge_counts([Counter(s["status"] for s in states.values())])
    stats["analytics_pending"] = len(set(to_record) - recorded)
    stats["analytics_unmatched"] = len(recorded - set(to_record))
    stats["ignored_line_events"] = stock.ignored
    return Models(
        orders={oid: orders_domain.to_view(s) for oid, s in states.items()},
        stock={pid: inventory_domain.to_view(pid, s) for pid, s in stock.stock.items()},
        analytics=analytics_domain.summary(partial, by_status),
        stats={k: stats[k] for k in sorted(stats)},
    )


def compare(rebuilt: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """List every difference between two ``{"orders", "stock", "analytics"}`` model dicts."""
    diffs: list[str] = []
    r_orders, l_orders = rebuilt["orders"], live["orders"]
    for oid in sorted(set(r_orders) | set(l_orders)):
        if oid not in l_orders:
            diffs.append(f"order {oid}: only rebuilt ({r_orders[oid]['status']})")
        elif oid not in r_orders:
            diffs.append(f"order {oid}: only live ({l_orders[oid]['status']})")
        else:
            diffs.extend(f"order {oid}: {d}" for d in _field_diffs(r_orders[oid], l_orders[oid]))
    r_stock, l_stock = rebuilt["stock"], live["stock"]
    for pid in sorted(set(r_stock) | set(l_stock)):
        r = r_stock.get(pid) or inventory_domain.to_view(pid, None)
        lv = l_stock.get(pid) or inventory_domain.to_view(pid, None)
        diffs.extend(f"stock {pid}: {d}" for d in _field_diffs(r, lv))
    diffs.extend(f"analytics: {d}" for d in _field_diffs(rebuilt["analytics"], live["analytics"]))
    return diffs


def _field_diffs(rebuilt: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    return [
        f"{k}: rebuilt {rebuilt.get(k)!r} != live {live.get(k)!r}"
        for k in sorted(set(rebuilt) | set(live))
        if rebuilt.get(k) != live.get(k)
    ]


# --- reading the topics -------------------------------------------------------------


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
                            out[tp].append(Message(key, _loads(r.value)))
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
    bootstrap: str, app_id: str, *, payment_timeout: float = 30.0, progress: bool = True
) -> Models:
    """Read the app's event topics and rebuild the read models from them."""
    names = topic_names(app_id)
    read = await read_topics(bootstrap, list(names.values()), progress=progress)
    return rebuild({logical: read[kafka] for logical, kafka in names.items()}, payment_timeout)


# --- the live models, for --compare ------------------------------------------------


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


# --- running it -----------------------------------------------------------------------


async def run(
    bootstrap: str,
    app_id: str,
    *,
    payment_timeout: float = 30.0,
    compare_url: str | None = None,
    output: str | None = None,
    progress: bool = True,
    say: Any = print,
    max_diffs: int = 50,
) -> int:
    """Rebuild, optionally write and compare; print the count line; return the exit status."""
    models = await rebuild_from_kafka(bootstrap, app_id, payment_timeout=payment_timeout, progress=progress)
    status = 0
    if output:
        Path(output).write_bytes(orjson.dumps(models.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        say(f"wrote {output}")
    if compare_url:
        diffs = compare(models.as_dict(), await fetch_live(compare_url))
        if diffs:
            status = 1
            say(f"{len(diffs)} difference(s) from {compare_url}:")
            for line in diffs[:max_diffs]:
                say(f"  {line}")
            if len(diffs) > max_diffs:
                say(f"  ... and {len(diffs) - max_diffs} more")
        else:
            say(f"no differences from {compare_url}: orders, stock and analytics are equal")
    extra = ", ".join(f"{k} {v}" for k, v in models.stats.items() if v and k not in ("events",))
    say(f"{models.count_line()} ({extra})" if extra else models.count_line())
    return status


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the ``python -m app.rebuild`` command line."""
    p = argparse.ArgumentParser(prog="python -m app.rebuild", description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", "-b", default=None, help="Kafka URL (default: the app's settings)")
    p.add_argument("--app-id", default=None, help="app id, the topic prefix (default: the app's settings)")
    p.add_argument("--compare", metavar="URL", default=None, help="a worker's base URL to compare the models with")
    p.add_argument("--output", metavar="FILE", default=None, help="write the rebuilt models as JSON to FILE")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line."""
    args = parse_args(argv)
    try:
        return asyncio.run(
            run(
                bootstrap_servers(args.broker or settings.broker),
                args.app_id or settings.app_id,
                payment_timeout=settings.payment_timeout,
                compare_url=args.compare,
                output=args.output,
                progress=args.progress,
            )
        )
    except RebuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# --- `faust -A app rebuild` ------------------------------------------------------------

from faust.cli import AppCommand, option  # noqa: E402  # the CLI half needs the built app

from app.main import app, settings  # noqa: E402


async def _rebuild_command(
    self: AppCommand,
    compare_url: str | None,
    output: str | None,
    broker: str | None,
    app_id: str | None,
    progress: bool,
) -> None:
    """Rebuild the read models (orders, stock, analytics) from the event topics."""
    try:
        status = await run(
            bootstrap_servers(broker or settings.broker),
            app_id or settings.app_id,
            payment_timeout=settings.payment_timeout,
            compare_url=compare_url,
            output=output,
            progress=progress,
            say=self.say,
        )
    except RebuildError as exc:
        self.say(f"error: {exc}", file=self.stderr)
        status = 2
    if status:
        raise SystemExit(status)


# Faust names the subcommand after the function: `faust -A app rebuild`.
_rebuild_command.__name__ = _rebuild_command.__qualname__ = "rebuild"
RebuildCommand = app.command(
    option("--compare", "compare_url", default=None, metavar="URL", help="A worker's base URL to compare with."),
    option("--output", default=None, metavar="FILE", help="Write the rebuilt models as JSON to FILE."),
    option("--broker", "-b", default=None, help="Kafka URL (default: the app's settings)."),
    option("--app-id", default=None, help="App id, the topic prefix (default: the app's settings)."),
    option("--progress/--no-progress", default=True, help="Show a progress bar."),
)(_rebuild_command)


if __name__ == "__main__":
    raise SystemExit(main())
