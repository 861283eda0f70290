"""A worker's web server holds a bounded number of connections, and none for long without a request.

aiohttp (which faust's web server runs on) has no timeout for a request's head and keeps an
idle connection for an hour: anyone can open connections, send half a header line, and hold
one file descriptor each until the worker can no longer open a RocksDB file or a broker
socket. :func:`install` wraps ``RequestHandler.connection_made`` so that

* a connection that has not sent one whole request head within :data:`HEAD_TIMEOUT`
  seconds is closed (nginx's ``client_header_timeout``);
* an idle keep-alive connection is closed after :data:`IDLE_TIMEOUT` seconds (aiohttp's own
  keep-alive timer, shortened; it also closes one stuck halfway through a later head);
* past :func:`max_connections` open connections the oldest idle keep-alive one (it has been
  answered and sent nothing since) is closed to make room, as nginx reuses idle keep-alive
  connections when it runs out; with none idle, a new one is answered ``503`` in the JSON
  error shape and closed at once, so descriptors stay for the worker's own files and sockets.
  Without the eviction, one client holding idle keep-alive connections (cap ÷ 75 s new ones a
  second) filled the cap, and the other workers' calls were refused like its own: lists,
  analytics and every key this worker owns answered 503 through every worker (probe 25).

Refusals are counted and logged at most once per :data:`LOG_EVERY` seconds, never per
connection: whoever floods the port does not also fill the log.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Any

from aiohttp import web_protocol

from app.faust_patches.parser_errors import json_error

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0
LOG_EVERY = 10.0

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s"
)
_BUSY_BODY = json_error("unavailable", "too many open connections; try again")

#: How many of the oldest connections are looked at for an idle one to close (a bound on the
#: work a new connection past the limit costs when all of them are busy).
EVICT_SCAN = 512

#: Connections refused or closed by the limits since start, by reason (for tests and the log).
counts = {"refused": 0, "head_timeout": 0, "evicted": 0}
_logged_at = [0.0]


def max_connections(nofile: int | None = None) -> int:
    """How many connections the web server keeps open at once: a quarter of the descriptor limit.

    The rest is for RocksDB's files, the broker connections and the worker's own calls.
    """
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(64, min(10_000, nofile // 4))


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard one (as Kafka's own scripts advise); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _note(reason: str) -> None:
    counts[reason] += 1
    now = time.monotonic()
    if now - _logged_at[0] >= LOG_EVERY:
        _logged_at[0] = now
        log.warning(
            "web server: %d connections refused over the limit, %d closed without a request head in %s s so far",
            counts["refused"],
            counts["head_timeout"],
            HEAD_TIMEOUT,
        )


def _head_deadline(handler: Any) -> None:
    if handler.transport is None:  # closed meanwhile
        return
    if handler._request_count == 0:  # not one whole request head yet
        _note("head_timeout")
        handler.force_close()


def _evict_idle(connections: dict[Any, Any]) -> bool:
    """Close the oldest idle keep-alive connection among the first :data:`EVICT_SCAN`; return whether one was."""
    for n, handler in enumerate(connections):  # in the order they were opened
        if n >= EVICT_SCAN:
            break
        waiter = handler._waiter  # set while it waits for its next request
        if handler._request_count and waiter is not None and not waiter.done() and not handler._messages:
            handler.force_close()
            counts["evicted"] += 1
            return True
    return False


def install(limit: int | None = None) -> bool:
    """Wrap ``RequestHandler.connection_made`` (once); return whether this call installed it."""
    handler_class: Any = web_protocol.RequestHandler
    if getattr(handler_class.connection_made, "_orderstream", False):
        return False
    original = handler_class.connection_made

    def connection_made(self: Any, transport: Any) -> None:
        if self._keepalive_timeout > IDLE_TIMEOUT:
            self._keepalive_timeout = IDLE_TIMEOUT
        original(self, transport)
        manager = self._manager
        if manager is not None:
            # A handler whose client left is cancelled (aiohttp's default since 3.7 lets it run
            # on): an abandoned long-poll frees its slot at once, and cancelling a forwarded
            # one closes its connection to the owner, whose own handler then ends too.
            manager.handler_cancellation = True
        if (
            manager is not None
            and len(manager._connections) > connection_made.limit  # type: ignore[attr-defined]
            and not _evict_idle(manager._connections)
        ):
            _note("refused")
            transport.write(BUSY % (len(_BUSY_BODY), _BUSY_BODY))
            self.force_close()
            return
        self._loop.call_later(HEAD_TIMEOUT, _head_deadline, self)  # (aiohttp's handler takes no weak reference)

    connection_made._orderstream = True  # type: ignore[attr-defined]
    connection_made.limit = limit if limit is not None else max_connections(raise_descriptor_limit())  # type: ignore[attr-defined]
    handler_class.connection_made = connection_made
    return True
