"""Answer any key on any worker: find the key's owner and forward the whole request there.

The engine's assignor publishes which worker (URL) owns each partition number; a key's
partition is the producer's murmur2 hash, the same in every topic and store. A request
for a key another worker owns is proxied there (method, path, query, headers and body);
a request that arrives forwarded is never forwarded again: if ownership moved meanwhile
the answer is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import yarl
from aiohttp import web
from multidict import CIMultiDict

from app import codec
from app.engine.assignor import TaskAssignor
from app.main import app, engine, settings
from app.web import guard

T = TypeVar("T")

log = logging.getLogger("orderstream.routing")

FORWARDED = "X-Orderstream-Forwarded"
RETRY_AFTER = "1"
#: Connections for short worker-to-worker calls (forwarded reads and commands, scatter-gather).
PEER_POOL = 200
#: Connections for forwarded long-polls: their own pool, so they cannot starve the one above.
LONG_POLL_POOL = 2_000
#: The methods of a long-poll (``?wait=``): aiohttp answers HEAD with the GET handler, waits included.
LONG_POLL_METHODS = frozenset({"GET", "HEAD"})
#: A client's headers a forwarded request keeps (its trace goes on at the owner).
FORWARDED_HEADERS = frozenset({"content-type", "authorization", "idempotency-key", "traceparent", "tracestate"})
_sessions: dict[str, aiohttp.ClientSession] = {}
#: Set by :func:`close`: no session opens after it.
_stopping = False


class Unavailable(Exception):
    """The answer cannot be given yet (owner unknown, rebalancing, recovering)."""


def session(kind: str = "peer") -> aiohttp.ClientSession:
    """Return the client session for worker-to-worker calls: ``"peer"`` or ``"long_poll"``, each its own pool."""
    current = _sessions.get(kind)
    if current is None or current.closed:
        if _stopping:
            # Closed on the way down (:func:`close`): one opened now would be left open at exit.
            raise Unavailable("this worker is stopping")
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
    return engine.partition_for(key)


def owner_of(topic: str, key: str) -> str:
    """Return the URL of the worker that owns ``key``, or raise :class:`Unavailable`."""
    if engine.rebalancing:
        raise Unavailable("the cluster is rebalancing")
    url = TaskAssignor.owners.get(partition_for(key))
    if not url:
        raise Unavailable("the owner of this key is not known yet")
    return url.rstrip("/")


#: Why a read of a key this worker does not serve (yet) is a 503.
NOT_SERVED = "this worker does not serve the key's partition yet"


def check_local(topic: str, key: str) -> None:
    """Raise :class:`Unavailable` unless this worker serves ``key``'s partition, recovered.

    The owner map can name this worker's URL for a partition it does not hold yet: a
    restarted worker reuses its URL while the group still lists its dead predecessor.
    """
    if engine.db(partition_for(key)) is None:
        raise Unavailable(NOT_SERVED)


def is_ready() -> bool:
    """Whether this worker has its assignment and its state is recovered."""
    return engine.ready


def workers() -> list[str]:
    """Return the URLs of every worker in the group (this one included)."""
    urls = {u.rstrip("/") for u in TaskAssignor.owners.values() if u}
    urls.add(my_url())
    return sorted(urls)


#: Seconds a worker's read of another (a page, a summary, dead letters, a forwarded GET) may take:
#: a frozen peer is a 503 before a client's usual 10 s timeout gives up (probe 25: ~16 s).
READ_TIMEOUT = 8.0
_READ = aiohttp.ClientTimeout(total=READ_TIMEOUT, sock_connect=3)


async def forward(request: web.Request, owner: str, *, path: str | None = None) -> web.Response:
    """Proxy ``request`` to ``owner`` (optionally to another ``path``) and relay its answer."""
    body = await request.read()
    # Every value, as sent: two Authorization headers must reach the owner as two (no token
    # there either), not as the last one alone.
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS and _utf8(v))
    headers[FORWARDED] = my_url()
    headers.update(guard.internal_headers())
    # The raw, still-encoded target: %3F stays in the path, %2F adds no segment. An
    # absolute-form target (``GET http://host/orders/x``, RFC 9112 §3.2.2) goes as its path.
    target = path or request.raw_path
    if not target.startswith("/"):
        target = request.rel_url.raw_path_qs
    url = yarl.URL(owner + target, encoded=True)
    kind = "long_poll" if request.method in LONG_POLL_METHODS and "wait" in request.query else "peer"
    # A plain read answers at once or not at all; a write may wait on the broker (10 s) first.
    read = kind == "peer" and request.method in ("GET", "HEAD")
    timeout = _READ if read else None
    try:
        async with session(kind).request(
            request.method, url, data=body or None, headers=headers, timeout=timeout
        ) as resp:
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


def serving(view: Callable[[int], T | None]) -> list[tuple[int, T]]:
    """The partitions this worker answers for in a ``/_local/...`` page, each with ``view(p)``.

    A partition whose view is ``None`` now (a rebalance began, the task closed or is
    rewinding) is left out, so the page never claims a partition it did not read.
    """
    return [(p, v) for p in engine.serving() if (v := view(p)) is not None]


async def gather_json(path_qs: str) -> list[Any]:
    """GET ``path_qs`` from every worker's local endpoint; raise :class:`Unavailable` if one fails.

    Each answer names the partitions it covers (:func:`serving`); unless together they
    cover every partition the answer would be partial (a restarted worker that does not
    hold its partitions yet, a takeover still recovering), so it is a 503 instead.
    """
    if engine.rebalancing:
        raise Unavailable("the cluster is rebalancing")
    pages = await _gather(path_qs)
    claimed = [p for page in pages for p in page.get("serving", ())]
    missing = sorted(set(range(settings.partitions)) - set(claimed))
    if missing:
        raise Unavailable(f"partitions {missing} are not served yet")
    if len(claimed) != len(set(claimed)) or engine.rebalancing:
        # A partition moved while the workers answered: two of them read it, so it would count twice.
        raise Unavailable("partitions moved during the read")
    return pages


async def gather_one(url: str, path_qs: str) -> Any:
    """GET ``path_qs`` from one worker's internal endpoint; raise :class:`Unavailable` if it fails."""
    try:
        return await _get_json(url, path_qs)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise Unavailable(f"worker {url} did not answer: {exc!r}") from exc


async def _get_json(url: str, path_qs: str) -> Any:
    headers = {FORWARDED: my_url(), **guard.internal_headers()}
    async with session().get(yarl.URL(url + path_qs, encoded=True), headers=headers, timeout=_READ) as resp:
        if resp.status != 200:
            raise Unavailable(f"worker {url} answered {resp.status}")
        return codec.loads(await resp.read())


async def _gather(path_qs: str) -> list[Any]:
    try:
        return list(await asyncio.gather(*(_get_json(u, path_qs) for u in workers())))
    except (TimeoutError, aiohttp.ClientError) as exc:
        # ``str(TimeoutError())`` is empty (probe 25: "a worker did not answer: ; retry shortly").
        raise Unavailable(f"a worker did not answer ({type(exc).__name__}{f': {exc}' if str(exc) else ''})") from exc


async def close() -> None:
    """Close the client sessions; a worker-to-worker call after this is a 503 (the worker is stopping)."""
    global _stopping
    _stopping = True
    for current in list(_sessions.values()):
        if not current.closed:
            await current.close()
