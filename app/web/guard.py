"""Who may call what, and how much work one worker takes on: admin bearer, peer token, caps.

- Admin endpoints need ``Authorization: Bearer $ORDERSTREAM_ADMIN_TOKEN`` when that token is set.
- Worker-to-worker endpoints (``/_local/*``, ``/users/{id}/_create``) need the internal token
  in :data:`INTERNAL_HEADER`; everyone else gets a 404, as if they did not exist.
- At most :data:`MAX_IN_FLIGHT` requests are served at once and at most :data:`MAX_WAITERS`
  long-polls wait at once; beyond, the answer is 503 with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from app import metrics
from app.main import engine, settings

INTERNAL_HEADER = "X-Orderstream-Internal"
#: Requests served at once by one worker (long-polls count as waiters instead).
MAX_IN_FLIGHT = int(getattr(settings, "max_in_flight", 1_000))
#: Long-polls (``GET /orders/{id}?wait=``) waiting at once on one worker, local or forwarded.
MAX_WAITERS = int(getattr(settings, "max_waiters", 10_000))
#: Seconds a client is asked to wait before retrying a 503.
RETRY_AFTER = "1"


class Refused(Exception):
    """An error answer decided before the handler runs: status, code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _same(given: str | None, expected: str) -> bool:
    """Constant-time compare; a header that is not valid UTF-8 is simply not equal."""
    if given is None:
        return False
    try:
        raw = given.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(raw, expected.encode("utf-8"))


def admin_configured() -> bool:
    """Whether an admin token is set (admin endpoints are open without one, on loopback only)."""
    return bool(settings.admin_token)


def is_admin(request: web.Request) -> bool:
    """Whether the request carries the valid admin bearer (never true when no token is set)."""
    token = settings.admin_token
    given = request.headers.getall("Authorization", [])
    if not token or len(given) != 1:
        return False  # two Authorization headers: which one counts is a guess, so neither does
    scheme, _, credentials = given[0].partition(" ")
    # The scheme is case-insensitive (RFC 9110 §11.1): "bearer x" is "Bearer x"; the token is not.
    return scheme.lower() == "bearer" and _same(credentials.strip(" "), token)


def require_admin(request: web.Request) -> None:
    """Enforce the admin bearer when a token is set: 401 otherwise."""
    if admin_configured() and not is_admin(request):
        raise Refused(401, "unauthorized", "this endpoint needs Authorization: Bearer <admin token>")


def internal_token() -> str:
    """The token workers of one app show each other: the ``internal_token`` setting, else derived.

    Derived from the admin token, the app id and the Kafka cluster's id, so workers
    configured alike agree without a new setting. With no admin token it keeps out every
    HTTP client that cannot ask the broker for its cluster id (the app id shows in
    ``/metrics``; the cluster id nowhere in the API); set either token wherever clients
    can reach the workers.
    """
    if settings.internal_token:  # faust.ini < ORDERSTREAM_INTERNAL_TOKEN < --orderstream-internal-token
        return settings.internal_token
    key = (settings.admin_token or "").encode()
    scope = f"orderstream-internal/{settings.app_id}/{engine.cluster_id}"
    return hmac.new(key, scope.encode(), hashlib.sha256).hexdigest()


def internal_headers() -> dict[str, str]:
    """Headers that make a worker-to-worker call acceptable to the peer."""
    return {INTERNAL_HEADER: internal_token()}


def internal_path(path: str) -> bool:
    """Whether ``path`` is a worker-to-worker endpoint (``/_local/*``, ``/users/{id}/_create``)."""
    return path.startswith("/_local/") or (path.startswith("/users/") and path.endswith("/_create"))


def is_peer(request: web.Request) -> bool:
    """Whether the request comes from a worker of this app (it carries the internal token)."""
    return _same(request.headers.get(INTERNAL_HEADER), internal_token())


def require_peer(request: web.Request) -> None:
    """404 for anyone but a peer worker: internal endpoints are not part of the public API."""
    if not is_peer(request):
        raise Refused(404, "not_found", "no such endpoint")


def request_hash(document: Any) -> str:
    """A keyed digest of a validated request: equal requests, equal hashes; the card never stored."""
    import orjson

    raw = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    return hmac.new(internal_token().encode(), raw, hashlib.sha256).hexdigest()


class Gauge:
    """A counter with a cap: ``hold()`` takes a slot or raises 503."""

    def __init__(self, name: str, cap: int) -> None:
        self.name, self.cap, self.value = name, cap, 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold one slot for the duration of the block."""
        if self.value >= self.cap:
            raise Refused(503, "overloaded", f"this worker already has {self.cap} {self.name}; retry shortly")
        self.value += 1
        try:
            yield
        finally:
            self.value -= 1


IN_FLIGHT = Gauge("requests in flight", MAX_IN_FLIGHT)
PEER_IN_FLIGHT = Gauge("worker-to-worker requests in flight", MAX_IN_FLIGHT)
WAITERS = Gauge("long-polls waiting", MAX_WAITERS)
metrics.HTTP_LONG_POLLS.set_function(lambda: WAITERS.value)
