"""Answer any key on any worker: find the key's owner and forward the whole request there.

Faust's ``table_route`` drops the request body and has multi-worker bugs, so we
route ourselves: hash the key the way the producer does (murmur2), look up which
worker the partition assignor gave that partition to, and proxy method, path,
query, headers and body. A request that arrives forwarded is never forwarded again:
if ownership moved meanwhile the answer is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import yarl
from aiohttp import web
from aiokafka.partitioner import murmur2
from faust.types import TP

from app import codec
from app.main import app, settings
from app.web import guard

log = logging.getLogger("orderstream.routing")

FORWARDED = "X-Orderstream-Forwarded"
RETRY_AFTER = "1"
#: Connections for short worker-to-worker calls (forwarded reads and commands, scatter-gather).
PEER_POOL = 200
#: Connections for forwarded long-polls: their own pool, so they cannot starve the one above.
LONG_POLL_POOL = 2_000
_sessions: dict[str, aiohttp.ClientSession] = {}


class Unavailable(Exception):
    """The answer cannot be given yet (owner unknown, rebalancing, recovering)."""


def session(kind: str = "peer") -> aiohttp.ClientSession:
    """Return the client session for worker-to-worker calls: ``"peer"`` or ``"long_poll"``, each its own pool."""
    current = _sessions.get(kind)
    if current is None or current.closed:
        limit = LONG_POLL_POOL if kind == "long_poll" else PEER_POOL
        current = _sessions[kind] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
            timeout=aiohttp.ClientTimeout(total=40 if kind == "long_poll" else 15, sock_connect=3),
        )
    return current


def my_url() -> str:
    """Return this worker's canonical URL."""
    return str(app.conf.canonical_url).rstrip("/")


def partition_for(key: str) -> int:
    """Return the partition ``key`` hashes to (the producer's default partitioner)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % settings.partitions


def _tps_url() -> Mapping[TP, str]:
    return getattr(app.assignor, "_tps_url", {}) or {}


def _owner_table_changelog(topic: str) -> str:
    """The changelog whose partition assignment tells who owns ``topic``'s keys.

    The assignor publishes owners only for changelog partitions; every topic is
    co-partitioned with the tables its agent writes, so partition p of the
    changelog is active wherever partition p of the topic is consumed.
    """
    from app.domain.common import INVENTORY, ORDERS, USERS
    from tables import order_to_state, product_to_stock, user_to_profile

    table = {ORDERS: order_to_state, INVENTORY: product_to_stock, USERS: user_to_profile}[topic]
    return table.changelog_topic.get_topic_name()


def owner_of(topic: str, key: str) -> str:
    """Return the URL of the worker that owns ``key`` of logical ``topic``, or raise :class:`Unavailable`."""
    if app.rebalancing:
        raise Unavailable("the cluster is rebalancing")
    url = _tps_url().get(TP(_owner_table_changelog(topic), partition_for(key)))
    if not url:
        raise Unavailable("the owner of this key is not known yet")
    return str(url).rstrip("/")


def check_local(topic: str, key: str) -> None:
    """Raise :class:`Unavailable` unless this worker holds ``key``'s partition, active and recovered.

    The owner map can name this worker's URL for a partition it does not hold yet:
    a restarted worker reuses its URL while the group still lists its dead
    predecessor. Answering from the local table then would return a default.
    """
    tp = TP(_owner_table_changelog(topic), partition_for(key))
    if not app.assignor.is_active(tp):
        raise Unavailable("this worker does not hold the key's partition yet")
    if not is_ready():
        raise Unavailable("this worker's tables are still recovering")


def is_ready() -> bool:
    """Whether this worker has its assignment and its tables are recovered."""
    if app.rebalancing or not _tps_url() or not getattr(app, "settled", False):
        return False
    recovery = cast(Any, app.tables).recovery
    return bool(recovery.completed.is_set()) and not recovery.in_recovery


def workers() -> list[str]:
    """Return the URLs of every worker in the group (this one included)."""
    urls = {str(u).rstrip("/") for u in _tps_url().values()}
    urls.add(my_url())
    return sorted(urls)


async def forward(request: web.Request, owner: str, *, path: str | None = None) -> web.Response:
    """Proxy ``request`` to ``owner`` (optionally to another ``path``) and relay its answer."""
    body = await request.read()
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() in ("content-type", "authorization", "idempotency-key") and _utf8(v)
    }
    headers[FORWARDED] = my_url()
    headers.update(guard.internal_headers())
    # The raw, still-encoded target: %3F stays in the path, %2F adds no segment.
    url = yarl.URL(owner + (path or request.raw_path), encoded=True)
    kind = "long_poll" if request.method == "GET" and "wait" in request.query else "peer"
    try:
        async with session(kind).request(request.method, url, data=body or None, headers=headers) as resp:
            payload = await resp.read()
            out_headers = {k: v for k, v in resp.headers.items() if k in ("Location", "Retry-After", "Content-Type")}
            return web.Response(body=payload, status=resp.status, headers=out_headers)
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("forwarding %s %s to %s failed: %r", request.method, request.rel_url.path, owner, exc)
        raise Unavailable(f"the owner {owner} did not answer") from exc


def _utf8(value: str) -> bool:
    """Whether a header value is valid UTF-8 (aiohttp keeps invalid bytes as surrogates that cannot be sent)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def serving() -> list[int]:
    """The partitions this worker answers for in ``/_local/...`` pages: active here, tables recovered.

    Every table is co-partitioned with the orders topic, so one changelog tells.
    """
    if not is_ready():
        return []
    from app.domain.common import ORDERS

    changelog = _owner_table_changelog(ORDERS)
    return [p for p in range(settings.partitions) if app.assignor.is_active(TP(changelog, p))]


async def gather_json(path_qs: str) -> list[Any]:
    """GET ``path_qs`` from every worker's local endpoint; raise :class:`Unavailable` if one fails.

    Each answer names the partitions it covers (:func:`serving`); unless together they
    cover every partition the answer would be partial (a restarted worker that does not
    hold its partitions yet, a takeover still recovering), so it is a 503 instead.
    """
    if app.rebalancing:
        raise Unavailable("the cluster is rebalancing")
    pages = await _gather(path_qs)
    covered = {p for page in pages for p in page.get("serving", ())}
    missing = sorted(set(range(settings.partitions)) - covered)
    if missing:
        raise Unavailable(f"partitions {missing} are not served yet")
    return pages


async def gather_one(url: str, path_qs: str) -> Any:
    """GET ``path_qs`` from one worker's internal endpoint; raise :class:`Unavailable` if it fails."""
    try:
        return await _get_json(url, path_qs)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise Unavailable(f"worker {url} did not answer: {exc!r}") from exc


async def _get_json(url: str, path_qs: str) -> Any:
    headers = {FORWARDED: my_url(), **guard.internal_headers()}
    async with session().get(yarl.URL(url + path_qs, encoded=True), headers=headers) as resp:
        if resp.status != 200:
            raise Unavailable(f"worker {url} answered {resp.status}")
        return codec.loads(await resp.read())


async def _gather(path_qs: str) -> list[Any]:
    try:
        return list(await asyncio.gather(*(_get_json(u, path_qs) for u in workers())))
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise Unavailable(f"a worker did not answer: {exc}") from exc


async def close() -> None:
    """Close the client sessions."""
    for current in list(_sessions.values()):
        if not current.closed:
            await current.close()
