"""The HTTP API of SPEC §4, on Faust's own aiohttp server.

Reads and state-checked commands for one key go to the key's owner
(:mod:`app.web.routing`); lists and the analytics summary scatter to every worker's
``/_local/...`` endpoint and merge. Writes are events produced to Kafka; the
answer is 202 once the broker has them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import HttpVersion10, hdrs, web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import EofStream
from aiohttp.web_protocol import RequestPayloadError
from aiokafka.errors import KafkaError

from app import codec, metrics, tracing
from app.domain import analytics as analytics_domain
from app.domain import inventory as inventory_domain
from app.domain import orders as orders_domain
from app.domain.common import INVENTORY, ORDERS
from app.domain.common import USERS as USERS_TOPIC
from app.engine.assignor import TaskAssignor
from app.engine.dead_letters import redrivable
from app.engine.step import Step
from app.engine.store import PartitionDB, StoreError, out_of_resources
from app.main import engine, settings
from app.topics import BY_NAME, LOGICAL, kafka_name
from app.web import guard, models, openapi, routing, validation
from app.web.guard import is_admin, require_admin, require_peer
from app.web.models import MAX_LIMIT
from app.web.routing import FORWARDED, LONG_POLL_METHODS, Unavailable
from app.web.validation import parse
from schemas.envelope import Envelope, make, parse_ts
from schemas.registry import order_placed, set_stock_command
from tables import (
    USERS,
    analytics_partial,
    committed,
    committed_for,
    dead_letter_rows,
    latest,
    latest_for,
    order_history,
    order_rows,
    order_state,
    status_counts,
    stock_in,
    stock_rows,
)

log = logging.getLogger("orderstream.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Paths answered outside the in-flight cap: they are cheap and say whether the worker lives.
UNCAPPED = frozenset({"/health", "/ready", "/metrics"})
#: Payload fields a customer read never shows (the admin view does).
PRIVATE_FIELDS = frozenset({"token", "user_email", "email", "to"})
#: Event metadata only the admin sees: the request's keyed digest and its idempotency key.
PRIVATE_METADATA = frozenset({"request_hash", "idempotency_key"})


class ApiError(Exception):
    """An error answer: status, code, message, details."""

    def __init__(
        self, status: int, code: str, message: str, details: list[Any] | None = None, *, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []
        #: Close the connection after the answer (what is left of the body is not read).
        self.close = close


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Answer with an orjson body."""
    return web.Response(body=codec.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, details: list[Any] | None = None) -> web.Response:
    """Answer with the SPEC's error shape (invisible characters of an echoed id shown as escapes).

    A 503 says when to retry; a 401 names the scheme it takes (RFC 9110 §11.6.1: ``WWW-Authenticate``).
    """
    return json_response(
        {"error": code, "message": shown(message), "details": details or []}, status, _ERROR_HEADERS.get(status)
    )


#: The headers an error status comes with.
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": 'Bearer realm="orderstream admin"'},
    503: {"Retry-After": routing.RETRY_AFTER},
}


def shown(text: str) -> str:
    """``text`` with control, format (bidi overrides, zero-width) and other invisible characters as
    ``\\uXXXX``: a message that names a path's id must not carry them to a terminal or a page."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(f"\\u{ord(c):04x}" if models.invisible(c) else c for c in text)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; never a traceback. Caps the requests in flight."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    if request.version < HttpVersion10:
        # aiohttp serves a request line without a version as HTTP/0.9 (with headers, which 0.9 has
        # not): it is a malformed HTTP/1.x request line here, refused as the parser refuses one.
        refused = error_response(400, "bad_request", "the request line needs a version: HTTP/1.0 or HTTP/1.1")
        refused.force_close()
        return refused
    try:
        await _read_body(request)
        _no_unknown_query(request, route)
        parents = request.headers.getall("traceparent", [])
        # A client's trace goes on; two traceparent headers are none (W3C Trace Context: a new trace).
        with tracing.request_parent(parents[0] if len(parents) == 1 else None):
            response = await _capped(request, handler)
    except ClientGone:
        # No one to answer: the client closed the connection while sending its body. Not a
        # server error: recorded as 499 (as nginx does), logged only at debug.
        log.debug("%s %s: the client left before its answer", request.method, request.rel_url.path)
        metrics.observe_http(route, request.method, CLIENT_GONE, time.perf_counter() - started)
        return error_response(400, "client_gone", "the connection closed before the body arrived")
    except asyncio.CancelledError:
        # The client left and aiohttp cancelled the handler (app.faust_patches.connections):
        # counted as 499 too, then the cancellation goes on.
        metrics.observe_http(route, request.method, CLIENT_GONE, time.perf_counter() - started)
        raise
    except guard.Refused as exc:
        response = error_response(exc.status, exc.code, exc.message)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        if exc.close:
            response.force_close()
    except validation.Invalid as exc:
        response = error_response(422, "invalid", "the request has invalid fields", exc.details)
    except Unavailable as exc:
        response = error_response(503, "unavailable", f"{exc}; retry shortly")
    except StoreError as exc:
        log.error("%s %s: %s", request.method, request.rel_url.path, exc)
        engine.report_damage(exc.partition, exc)
        why = (
            "this worker is short of disk, memory or file descriptors, or may not open its files"
            if out_of_resources(exc)
            else "this worker cannot read its copy of the data"
        )
        response = error_response(503, "unavailable", f"{why}; retry shortly")
    except web.HTTPRequestEntityTooLarge:
        response = error_response(413, "too_large", f"the body is larger than {settings.max_body_bytes} bytes")
    except web.HTTPMethodNotAllowed as exc:
        if guard.internal_path(request.path) and not guard.is_peer(request):
            # As for GET: an internal endpoint does not exist for anyone but a peer, whatever the method.
            response = error_response(404, "not_found", "no such endpoint")
        else:
            response = error_response(exc.status, "method_not_allowed", f"{exc.method} is not allowed here")
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    except web.HTTPException as exc:
        response = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.rel_url.path)
        response = error_response(500, "internal", "internal error")
    metrics.observe_http(route, request.method, response.status, time.perf_counter() - started)
    return response


def _no_unknown_query(request: web.Request, route: str) -> None:
    """A query parameter an operation does not take is a 422, not ignored: ``POST /dlq/redrive?source_topic=x``
    must not redrive everything. Operations with a query model validate it in their handler; an
    admin operation answers 401 before telling a stranger what it takes."""
    if not request.query:
        return
    op = openapi.BY_ROUTE.get(("GET" if request.method == "HEAD" else request.method, route))
    if op is None or not openapi.refuses_query(op):
        return  # internal, unrouted or an ignoring page: the handler answers
    if op.admin:
        require_admin(request)
    names = sorted(set(request.query))
    raise validation.Invalid([{"field": k, "message": "this endpoint takes no such query parameter"} for k in names])


#: Seconds a client has to send a request's whole body once its headers arrived.
BODY_TIMEOUT = 10.0
#: The status recorded (never sent) for a request whose client left while sending its body.
CLIENT_GONE = 499


class ClientGone(Exception):
    """The client closed the connection before its body arrived."""


async def _read_body(request: web.Request) -> None:
    """Read the body before a request takes a slot (aiohttp keeps it for the handler).

    A client that sends its body slowly, or never, holds no slot of the in-flight cap: it
    gets a 408 after :data:`BODY_TIMEOUT`. A body that cannot be decoded per its
    ``Content-Encoding`` is a 400; a larger one than allowed a 413.
    """
    if not request.body_exists:
        return
    _known_encoding(request)
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            await request.read()
    except TimeoutError:
        raise ApiError(408, "timeout", f"the body did not arrive within {BODY_TIMEOUT:.0f} s", close=True) from None
    except (BadHttpMessage, RequestPayloadError) as exc:
        # A body that does not decode per its Content-Encoding (aiohttp wraps the decoder's error).
        # The connection closes after the answer, and the body counts as ended: aiohttp would
        # otherwise read the rest of it to reuse the connection, meet the decoder's error
        # again, and log that as a server error, once per such request.
        request.content.feed_eof()
        raise ApiError(400, "bad_encoding", "the body cannot be decoded per its Content-Encoding", close=True) from exc
    except (ConnectionError, EofStream) as exc:
        raise ClientGone from exc


#: The ``Content-Encoding`` of a request body the edge decodes (one, as aiohttp decodes one).
ENCODINGS = frozenset({"gzip", "deflate", "identity"})


def _known_encoding(request: web.Request) -> None:
    """A body in a coding the edge does not decode is a 415, never read as if it were plain JSON.

    aiohttp decodes a single ``gzip`` or ``deflate`` and passes anything else through as it
    came (``compress``, ``x-custom``, ``gzip, gzip``): such a body would be taken for JSON.
    """
    transfer = [
        coding.strip().lower()
        for value in request.headers.getall(hdrs.TRANSFER_ENCODING, [])
        for coding in value.split(",")
        if coding.strip()
    ]
    if transfer not in ([], ["chunked"]):
        # aiohttp de-chunks and passes any other coding through as it came (RFC 9112 §6.1: a
        # coding the server does not understand is a 501).
        request.content.feed_eof()
        raise ApiError(501, "not_implemented", "the only Transfer-Encoding taken is chunked", close=True)
    given = request.headers.getall(hdrs.CONTENT_ENCODING, [])
    if not given or (len(given) == 1 and given[0].strip().lower() in ENCODINGS):
        return
    request.content.feed_eof()  # never read: the connection closes after the answer
    raise ApiError(
        415, "unsupported_encoding", "the body's Content-Encoding must be one of gzip, deflate, identity", close=True
    )


async def _capped(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve within the caps: long-polls count as waiters (in :func:`get_order`), peers on their own gauge."""
    resource = request.match_info.route.resource
    long_poll = resource is not None and resource.canonical == "/orders/{order_id}" and "wait" in request.query
    if request.path in UNCAPPED or (request.method in LONG_POLL_METHODS and long_poll):
        return await handler(request)
    gauge = guard.PEER_IN_FLIGHT if guard.is_peer(request) else guard.IN_FLIGHT
    with gauge.hold():
        return await handler(request)


#: ``charset`` values a JSON body may declare (ASCII is a subset of UTF-8).
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


async def read_json(request: web.Request, *, empty: Any = ...) -> Any:
    """Read and parse the JSON body: 415 unless ``application/json``, 413 when too large, 400 when not JSON.

    ``empty`` is what a body-less request means (default: a missing body is not JSON).
    """
    if request.content_type != "application/json" and (request.body_exists or empty is ...):
        raise ApiError(415, "unsupported_media_type", "the body must be JSON with Content-Type: application/json")
    if request.body_exists and request.charset is not None and request.charset.lower() not in UTF8_CHARSETS:
        # JSON is UTF-8 (RFC 8259 §8.1): a body declared in another charset would be read as what it is not.
        raise ApiError(415, "unsupported_media_type", "a JSON body is UTF-8: charset must be utf-8 or absent")
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise ApiError(413, "too_large", f"the body is larger than {settings.max_body_bytes} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"the body is larger than {settings.max_body_bytes} bytes") from None
    if len(raw) > settings.max_body_bytes:
        raise ApiError(413, "too_large", f"the body is larger than {settings.max_body_bytes} bytes")
    if not raw.strip() and empty is not ...:
        return empty
    try:
        value = codec.loads(raw)
    except ValueError as exc:
        if "number is infinity" not in str(exc):
            raise ApiError(400, "bad_json", "the body is not valid JSON") from None
        value = _json_beyond_orjson(raw)
    if isinstance(value, (dict, list)):
        _refuse_duplicate_keys(raw)
    return value


def _refuse_duplicate_keys(raw: bytes) -> None:
    """400 for an object naming one member twice: parsers disagree on which one counts (orjson takes
    the last, many proxies and firewalls the first), so one body would mean two things."""

    def pairs(items: list[tuple[str, Any]]) -> None:
        names = [name for name, _ in items]
        if len(names) != len(set(names)):
            twice = sorted(name for name, n in Counter(names).items() if n > 1)
            raise ApiError(400, "bad_json", f"the body names {twice[0]!r} twice in one object")

    try:
        json.loads(raw, object_pairs_hook=pairs, parse_float=str, parse_int=str, parse_constant=str)
    except RecursionError:
        # orjson reads 1,024 levels, the standard library fewer: what it cannot check is refused
        # (no request nests more than four levels; a duplicate could hide in it).
        raise ApiError(400, "bad_json", "the body nests too deeply") from None
    except ValueError:
        pass  # orjson read it: only duplicates matter here


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _json_beyond_orjson(raw: bytes) -> Any:
    """Read a body orjson refused for a number past a double (``9`` × 400, ``1e999``): valid JSON, so a
    422 on its field, not a 400.

    The standard library reads it, any such number as ±1e300 (never used: no field takes a
    float), and what it read must be something orjson can write back (no lone surrogate, no
    NaN): else it is a 400 as orjson would have said.
    """
    try:
        value = json.loads(raw, parse_int=_bounded_number, parse_float=_bounded_number, parse_constant=_not_json)
        codec.dumps(value)
    except (ValueError, TypeError, RecursionError):
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None
    return value


def _bounded_number(text: str) -> int | float:
    number = float(text)
    if math.isfinite(number):
        return int(text) if text.lstrip("-").isdigit() and len(text) <= 18 else number  # as orjson reads it
    return math.copysign(1e300, number)


#: What :func:`read_json` returns for a request without a body (a JSON ``null`` is a body: a 422).
NO_BODY: Any = object()


async def _no_body(request: web.Request) -> None:
    """A command without a body: a body it has must still be JSON (415 if undeclared, else CSRF gets in; 400 if
    not), and nothing but ``{}``: a field it would drop (``{"signed_by": "me"}``) is a 422, as in every body."""
    body = await read_json(request, empty=NO_BODY)
    if body is not NO_BODY:
        parse(models.NoBody, body)


def _scrub(value: Any) -> Any:
    """Leave out payment tokens and emails at any depth of an event payload."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in PRIVATE_FIELDS}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _customer_view(env: dict[str, Any]) -> dict[str, Any]:
    view = {**env, "payload": _scrub(env.get("payload") or {})}
    if isinstance(env.get("metadata"), dict):
        view["metadata"] = {k: v for k, v in env["metadata"].items() if k not in PRIVATE_METADATA}
    return view


async def produce(topic: str, key: str, env: Envelope) -> None:
    """Send an envelope to a logical topic and wait until the broker has it (in a span: the trace's root).

    A broker that does not take it (down, timing out, refusing) is a 503 with ``Retry-After``;
    after a timeout it may still land, and a retry with the same ``Idempotency-Key`` places the
    order once.
    """
    headers: list[tuple[str, bytes]] = []
    with tracing.stage_span("http", env, tracing.request_headers()):
        tracing.inject(headers)
        try:
            await engine.produce(topic, key, codec.dumps(env), headers)
        except KafkaError as exc:
            log.warning("the broker did not take a %s for %s: %r", env["type"], key, exc)
            raise Unavailable(f"the broker did not take the message ({type(exc).__name__})") from exc


def _db(key: str) -> PartitionDB:
    """The committed state of ``key``'s partition here (``check_local`` passed), or a 503."""
    db = committed_for(key)
    if db is None:
        raise Unavailable(routing.NOT_SERVED)
    return db


def _latest(key: str) -> PartitionDB | Step:
    """``key``'s partition as reads see it here (:func:`tables.latest_for`), or a 503."""
    view = latest_for(key)
    if view is None:
        raise Unavailable(routing.NOT_SERVED)
    return view


async def produce_and_wait(topic: str, key: str, env: Envelope) -> bool:
    """Produce a command, then wait (at most :data:`APPLIED_WAIT`) until this worker committed its effect.

    A command its stage refused (the state changed since the edge checked it: two restocks
    at once past the bound, stock reserved meanwhile) is a 409 with the stage's reason, not
    a 202 for something that will not happen.
    """
    applied = asyncio.ensure_future(engine.waiters.wait(env["id"], APPLIED_WAIT))
    await asyncio.sleep(0)  # the waiter is registered before the command can be handled
    try:
        await produce(topic, key, env)
    except BaseException:
        applied.cancel()
        raise
    done = await applied
    refusal = engine.refusals.pop(env["id"], None)
    if refusal is not None:
        reason = str(refusal) if isinstance(refusal, ValueError) else "its stage could not apply it"
        raise ApiError(409, "conflict", f"{env['type']} refused: {reason}")
    return done


def _query(request: web.Request, model: type[validation.M]) -> validation.M:
    """Validate the query string; a parameter given twice is a 422 (which one would count is a guess)."""
    repeated = sorted({k for k in request.query if len(request.query.getall(k)) > 1})
    if repeated:
        raise validation.Invalid([{"field": k, "message": "given more than once"} for k in repeated])
    return parse(model, dict(request.query))


def _local_query(query: models.Query) -> str:
    """The validated query, re-encoded for a peer's ``/_local/...`` endpoint."""
    return urlencode({k: v for k, v in query.model_dump(exclude_none=True).items()})


def _routed(
    topic: str, key_param: str
) -> Callable[[Callable[[web.Request, str], Awaitable[web.StreamResponse]]], Handler]:
    """Run the handler on the worker that owns the key; forward the request there otherwise."""

    def deco(local: Callable[[web.Request, str], Awaitable[web.StreamResponse]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            key = request.match_info[key_param]
            if len(key) > models.MAX_KEY:
                raise validation.Invalid([{"field": key_param, "message": f"at most {models.MAX_KEY} characters"}])
            forwarded = await _to_owner(request, topic, key)
            return forwarded if forwarded is not None else await local(request, key)

        handler.__name__ = local.__name__
        return handler

    return deco


async def _to_owner(request: web.Request, topic: str, key: str) -> web.Response | None:
    """The owner's answer when ``key`` is another worker's (the request forwarded), else ``None``: serve it here."""
    owner = routing.owner_of(topic, key)
    if owner != routing.my_url():
        if request.headers.get(FORWARDED) and guard.is_peer(request):  # a client's copy of the header means nothing
            raise Unavailable("the key's owner changed while the request was forwarded")
        return await routing.forward(request, owner)
    routing.check_local(topic, key)
    return None


# --- orders -----------------------------------------------------------------------


async def place_order(request: web.Request) -> web.Response:
    """``POST /orders``: validate, tokenize the card, produce ``order.placed``."""
    body = await read_json(request)
    order = validation.order_request(body)
    if len(request.headers.getall("Idempotency-Key", [])) > 1:
        raise validation.Invalid([{"field": "Idempotency-Key", "message": "must be sent once"}])
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not (1 <= len(idem) <= 200 and idem.isascii() and idem.isprintable()):
        raise validation.Invalid([{"field": "Idempotency-Key", "message": "must be 1-200 printable ASCII characters"}])
    digest = guard.request_hash(
        {
            "user_id": order.user_id,
            "user_email": order.user_email,
            "items": order.items,
            "currency": order.currency,
            "card_number": order.card_number,
            "expiry": body["payment"]["expiry"],
            "cvv": body["payment"]["cvv"],
        }
    )
    # The same key from the same user names the same order: a retried POST creates nothing new.
    order_id = orders_domain.keyed_order_id(order.user_id, idem) if idem else str(uuid.uuid4())
    accepted = json_response({"order_id": order_id, "status": "pending"}, 202, {"Location": f"/orders/{order_id}"})
    if idem:
        # Placed by the order's owner only, so requests with one key are decided one at a time.
        forwarded = await _to_owner(request, ORDERS, order_id)
        if forwarded is not None:
            return forwarded
        while (first := _SENDING.get(order_id)) is not None:
            # The first request with this key still waits for the broker: this one's answer is
            # its outcome (probe 25: a 202 at once here, then the first failed and the worker was
            # killed; the order that 202 promised never existed).
            _already_placed(order_id, digest)  # another body under the key: 422 at once
            await asyncio.shield(first)
        if _already_placed(order_id, digest):
            return accepted
    from agents.payments import gateway

    card = gateway.tokenize(order.card_number)
    payload = {
        "order_id": order_id,
        "user_id": order.user_id,
        "user_email": order.user_email,
        "items": order.items,
        "total_cents": sum(i["price_cents"] * i["quantity"] for i in order.items),
        "currency": order.currency,
        "payment": {"method": "card", "token": card.token, "last4": card.last4},
    }
    env = order_placed(
        order_id,
        payload,
        metadata={"idempotency_key": idem, "request_hash": digest} if idem else {"request_hash": digest},
    )
    if idem:
        _PLACING[order_id] = (digest, time.monotonic())  # before any await: the next request sees it
        _SENDING[order_id] = asyncio.get_running_loop().create_future()
    try:
        await produce(ORDERS, order_id, env)
    except BaseException:
        if idem:
            _PLACING.pop(order_id, None)  # not placed (or not known to be): a retry places it
        raise
    finally:
        if idem and (sending := _SENDING.pop(order_id, None)) is not None:
            sending.set_result(None)  # the requests waiting on it look again
    metrics.ORDERS_PLACED.inc()
    return accepted


#: Seconds an order placed here with an ``Idempotency-Key`` is remembered before its state
#: is committed (the saga may not have handled its ``order.placed`` yet).
PLACING_FOR = 600.0
PLACING_MAX = 100_000
#: Order id -> (request hash, when) of keyed orders this worker placed, oldest first.
_PLACING: dict[str, tuple[str, float]] = {}
#: Keyed orders whose ``order.placed`` the broker has not taken yet: set once it has, or has not.
_SENDING: dict[str, asyncio.Future[None]] = {}


def _already_placed(order_id: str, digest: str) -> bool:
    """Whether the order of this key exists: True if placed with the same request, 422 if with another.

    Asked on the order's owner, without waiting between the question and the produce that
    follows a False, so two requests with one key are never both placed: the owner remembers
    the keyed orders it placed until their state is committed (the saga keeps
    ``request_hash`` from the ``order.placed`` metadata in the order's state). A state
    without ``request_hash`` (placed before it was recorded) counts as the same request.
    """
    now = time.monotonic()
    while _PLACING:
        oldest = next(iter(_PLACING))
        if now - _PLACING[oldest][1] < PLACING_FOR and len(_PLACING) < PLACING_MAX:
            break
        del _PLACING[oldest]
    state = order_state(_db(order_id), order_id)
    if state is not None:
        _PLACING.pop(order_id, None)
        placed_with = state.get("request_hash")
    elif order_id in _PLACING:
        placed_with = _PLACING[order_id][0]
    else:
        return False
    if placed_with not in (None, digest):
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
            [{"field": "Idempotency-Key", "message": "already used with a different body"}],
        )
    return True


async def get_order(request: web.Request) -> web.StreamResponse:
    """``GET /orders/{id}``: a long-poll holds a waiter slot on this worker, forwarded or not."""
    query = _query(request, models.OrderQuery)
    if query.wait is None:
        return await _get_order(request)
    with guard.WAITERS.hold():
        return await _get_order(request)  # cancelled if the client leaves (app.faust_patches.connections)


async def _until_final(order_id: str, state: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The order's committed state once final, or as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not orders_domain.is_final(state):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await engine.waiters.wait(order_id, remaining)  # woken by the commit of the order's next entry
        state = order_state(_db(order_id), order_id) or state
    return state


@_routed(ORDERS, "order_id")
async def _get_order(request: web.Request, order_id: str) -> web.Response:
    """``GET /orders/{id}`` with ``?wait=`` and ``?as_of=``."""
    query = _query(request, models.OrderQuery)
    as_of = query.as_of
    private = is_admin(request)  # the admin's view carries the email and the payment token
    if as_of is not None:
        return json_response(_order_as_of(order_id, as_of, private))
    wait = query.wait
    deadline = time.monotonic() + (wait or 0.0)
    while True:
        state = order_state(_db(order_id), order_id)
        if state is not None and (wait is None or orders_domain.is_final(state)):
            return json_response(orders_domain.to_view(state, private=private))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Woken by the commit of this order's next entry (a waiter costs nothing until then).
        await engine.waiters.wait(order_id, remaining)
    if state is None:
        state = await _settled_order(order_id)
    return json_response(orders_domain.to_view(state, private=private))


#: How long a read of an order that is not there waits for its partition to take in
#: everything sent to it so far (an order placed a moment ago is not yet handled).
SETTLE_WAIT = 2.0


async def _settled_order(order_id: str) -> dict[str, Any]:
    """The state of an order the committed state does not hold yet, once its partition has caught up.

    Read-your-writes after a 202: the order's ``order.placed`` was acknowledged by the broker
    before the 202, so once everything sent to the partition so far is handled and
    committed, an order still missing is unknown (404); a partition that cannot catch up
    within :data:`SETTLE_WAIT` is a 503 with ``Retry-After``, not a 404.
    """
    if not await engine.settled(ORDERS, order_id, SETTLE_WAIT):
        raise Unavailable("the order's partition has records not handled yet; retry shortly")
    state = order_state(_db(order_id), order_id)
    if state is None:
        raise ApiError(404, "not_found", f"order {order_id} not found")
    return state


def _order_as_of(order_id: str, as_of: str, private: bool) -> dict[str, Any]:
    try:
        instant = parse_ts(as_of)
    except ValueError:
        raise validation.Invalid([{"field": "as_of", "message": "must be an ISO-8601 instant"}]) from None
    history = order_history(_db(order_id), order_id)
    events: list[Any] = [e for e in history if parse_ts(e["timestamp"]) <= instant]
    state = orders_domain.fold(events, settings.payment_timeout, settings.pending_timeout)
    if state is None:
        raise ApiError(404, "not_found", f"order {order_id} did not exist at {as_of}")
    return {**orders_domain.to_view(state, private=private), "as_of": as_of}


@_routed(ORDERS, "order_id")
async def order_events(request: web.Request, order_id: str) -> web.Response:
    """``GET /orders/{id}/events``: the order's events in causal order."""
    history = order_history(_db(order_id), order_id)
    if not history:
        await _settled_order(order_id)
        history = order_history(_db(order_id), order_id)
    events = history if is_admin(request) else [_customer_view(e) for e in history]
    return json_response({"order_id": order_id, "events": events})


#: How long a command's 202 waits for its stage to apply it, so the next request sees it
#: (ship then deliver; create a user then update it).
APPLIED_WAIT = 5.0


def _order_command(kind: str) -> Handler:
    allowed = {"cancel": orders_domain.can_cancel, "ship": orders_domain.can_ship, "deliver": orders_domain.can_deliver}
    check = allowed[kind]

    @_routed(ORDERS, "order_id")
    async def command(request: web.Request, order_id: str) -> web.Response:
        payload: dict[str, Any] = {"order_id": order_id}
        if kind != "cancel":
            require_admin(request)
        if kind == "ship":
            payload.update(validation.ship_request(await read_json(request)))
        elif kind == "cancel":
            body = await read_json(request, empty=NO_BODY)  # none, or an object (JSON null is a 422)
            payload.update({} if body is NO_BODY else validation.cancel_request(body), reason="customer_cancelled")
        else:
            await _no_body(request)
        state = order_state(_db(order_id), order_id) or await _settled_order(order_id)
        if not check(state):
            ends = orders_domain.closing(state)
            shown = f"being {ends['status']}" if ends else state["status"]
            raise ApiError(409, "conflict", f"cannot {kind} an order that is {shown}", [{"status": state["status"]}])
        ending = orders_domain.closing(state) is not None  # a second cancel while the first gives lines back
        # Caused by the order as the customer or admin saw it: its history's last event, so the
        # command's ``causation_id`` resolves in ``GET /orders/{id}/events`` like every other's.
        seen = order_history(_db(order_id), order_id)
        cause = seen[-1].get("id") if seen else None
        env = make(f"order.{kind}", "order", order_id, payload, correlation_id=order_id, causation_id=cause)
        if await produce_and_wait(ORDERS, order_id, env):
            db = _db(order_id)
            state = order_state(db, order_id) or state
            ends = orders_domain.closing(state)
            if ends is not None and ends["status"] == "cancelled":
                # Cancelled once its reserved lines are back (SPEC: released, then cancelled):
                # answer with the order as it ends, as a cancel of an order with nothing reserved does.
                state = await _until_final(order_id, state, APPLIED_WAIT)
            elif ending and state["status"] == "cancelled":
                pass  # it was ending as cancelled when asked, and now is
            elif not any(e.get("causation_id") == env["id"] for e in order_history(db, order_id)):
                # The order moved on between the check above and the command (paid and confirmed
                # under a cancel, shipped by a concurrent ship): nothing happened, say so.
                raise ApiError(
                    409, "conflict", f"cannot {kind} an order that is {state['status']}", [{"status": state["status"]}]
                )
        return json_response({"order_id": order_id, "status": state["status"], "accepted": kind}, 202)

    command.__name__ = f"{kind}_order"
    return command


async def list_orders(request: web.Request) -> web.Response:
    """``GET /orders``: one page across all workers, ordered by order id."""
    query = _query(request, models.ListOrders)
    pages = await routing.gather_json(f"/_local/orders?{_local_query(query)}")
    page = _merge_pages(pages, "orders", "order_id", query.limit)
    if not is_admin(request):  # peers answer with the admin's view: a customer's has no email, no token
        page["orders"] = [orders_domain.customer_view(o) for o in page["orders"]]
    return json_response(page)


def _merge_pages(pages: list[Any], field: str, key: str, limit: int) -> dict[str, Any]:
    rows = sorted((row for page in pages for row in page[field]), key=lambda r: r[key])
    more = len(rows) > limit or any(page.get("more") for page in pages)
    rows = rows[:limit]
    return {field: rows, "next_cursor": rows[-1][key] if more and rows else None}


async def local_orders(request: web.Request) -> web.Response:
    """This worker's slice of ``GET /orders``."""
    require_peer(request)
    query = _query(request, models.ListOrders)
    limit = query.limit
    await _settle_orders()
    served = routing.serving(committed)  # after the wait: a partition that moved meanwhile is not claimed
    status, user_id, cursor = query.status, query.user_id, query.cursor
    rows: list[dict[str, Any]] = []
    for _, db in served:
        rows.extend(order_rows(db, status=status, user_id=user_id, cursor=cursor or "", limit=limit + 1))
    rows.sort(key=lambda s: s["order_id"])
    page = [orders_domain.to_view(s, private=True) for s in rows[:limit]]  # peers only; list_orders strips it
    return json_response({"orders": page, "more": len(rows) > limit, "serving": [p for p, _ in served]})


# --- inventory --------------------------------------------------------------------


@_routed(INVENTORY, "product_id")
async def get_stock(request: web.Request, product_id: str) -> web.Response:
    """``GET /inventory/{id}``: zeros for a product never stocked; a 422 for an id no product can have."""
    validation.product_id_ok(product_id)
    return json_response(inventory_domain.to_view(product_id, _stock(product_id)))


@_routed(INVENTORY, "product_id")
async def set_stock(request: web.Request, product_id: str) -> web.Response:
    """``PUT /inventory/{id}`` (admin): set the units on hand."""
    require_admin(request)
    validation.product_id_ok(product_id)
    on_hand = parse(models.SetStock, await read_json(request)).on_hand
    stock = _stock(product_id)
    if on_hand < stock["reserved"]:
        raise ApiError(409, "conflict", f"{stock['reserved']} units are reserved; on_hand cannot go below that")
    env = set_stock_command(product_id, on_hand)
    await produce_and_wait(INVENTORY, product_id, env)
    return json_response({"product_id": product_id, "on_hand": on_hand, "status": "accepted"}, 202)


@_routed(INVENTORY, "product_id")
async def restock(request: web.Request, product_id: str) -> web.Response:
    """``POST /inventory/{id}/restock`` (admin): add units."""
    require_admin(request)
    validation.product_id_ok(product_id)
    quantity = parse(models.Restock, await read_json(request)).quantity
    stock = _stock(product_id)
    if stock["on_hand"] + quantity > models.MAX_STOCK:
        raise ApiError(
            409, "conflict", f"on_hand would be {stock['on_hand'] + quantity}, past the {models.MAX_STOCK} allowed"
        )
    env = make(
        "inventory.restock",
        "product",
        product_id,
        {"product_id": product_id, "quantity": quantity},
        correlation_id=product_id,
    )
    await produce_and_wait(INVENTORY, product_id, env)
    return json_response({"product_id": product_id, "quantity": quantity, "status": "accepted"}, 202)


def _stock(product_id: str) -> dict[str, Any]:
    """The product's stock here as reads see it (zeros when unknown), or a 503 (not served here yet)."""
    return stock_in(_latest(product_id), product_id) or inventory_domain.empty_stock()


async def list_stock(request: web.Request) -> web.Response:
    """``GET /inventory``: one page of products across all workers."""
    query = _query(request, models.ListStock)
    pages = await routing.gather_json(f"/_local/inventory?{_local_query(query)}")
    return json_response(_merge_pages(pages, "products", "product_id", query.limit))


async def local_stock(request: web.Request) -> web.Response:
    """This worker's slice of ``GET /inventory``."""
    require_peer(request)
    query = _query(request, models.ListStock)
    limit, cursor = query.limit, query.cursor
    served: list[tuple[int, PartitionDB | Step]] = routing.serving(latest)
    rows: list[tuple[str, Any]] = []
    for _, view in served:
        rows.extend(stock_rows(view, cursor or "", limit + 1))
    rows.sort(key=lambda r: r[0])
    page = [inventory_domain.to_view(pid, s) for pid, s in rows[:limit]]
    return json_response({"products": page, "more": len(rows) > limit, "serving": [p for p, _ in served]})


# --- users ------------------------------------------------------------------------


async def create_user(request: web.Request) -> web.StreamResponse:
    """``POST /users`` (admin): the owner of the (given or new) user id checks it is new and creates it."""
    require_admin(request)
    fields = validation.user_request(await read_json(request), partial=False)
    user_id = fields.pop("user_id", None) or str(uuid.uuid4())
    owner = routing.owner_of(USERS_TOPIC, user_id)
    if owner != routing.my_url():
        return await routing.forward(request, owner, path=f"/users/{user_id}/_create")
    return await _create_user_locally(user_id, fields)


async def create_user_at_owner(request: web.Request) -> web.Response:
    """The owner's half of ``POST /users`` (internal: forwarded here with the id in the path)."""
    require_peer(request)
    user_id = request.match_info["user_id"]
    if not models.IDENT.fullmatch(user_id):
        raise validation.Invalid([{"field": "user_id", "message": "must be 1-128 letters, digits or ._:- characters"}])
    if routing.owner_of(USERS_TOPIC, user_id) != routing.my_url():
        raise Unavailable("the user's owner changed while the request was forwarded")
    fields = validation.user_request(await read_json(request), partial=False)
    fields.pop("user_id", None)
    return await _create_user_locally(user_id, fields)


#: Users whose ``user.created`` this worker (their owner) has sent and not yet seen applied:
#: ``{user id: monotonic time sent}``. A second create meanwhile is a 409, as it is once the
#: profile exists; without this, creates sent at once all passed the check and all got a 202
#: while the stage kept only the first.
_CREATING: dict[str, float] = {}


async def _create_user_locally(user_id: str, fields: dict[str, Any]) -> web.Response:
    routing.check_local(USERS_TOPIC, user_id)
    now = time.monotonic()
    creating = user_id in _CREATING and now - _CREATING[user_id] < APPLIED_WAIT
    if creating or _profile(user_id) is not None:
        raise ApiError(409, "conflict", f"user {user_id} already exists")
    if len(_CREATING) > 10_000:
        for stale in [u for u, at in _CREATING.items() if now - at >= APPLIED_WAIT]:
            del _CREATING[stale]
    _CREATING[user_id] = now  # before any await: a create arriving meanwhile sees it
    env = make("user.created", "user", user_id, {"user_id": user_id, **fields}, correlation_id=user_id)
    try:
        applied = await produce_and_wait(USERS_TOPIC, user_id, env)
    except BaseException:
        _CREATING.pop(user_id, None)
        raise
    if applied:
        _CREATING.pop(user_id, None)  # the profile answers from now on
    return json_response({"user_id": user_id, **fields}, 202, {"Location": f"/users/{user_id}"})


@_routed(USERS_TOPIC, "user_id")
async def update_user(request: web.Request, user_id: str) -> web.Response:
    """``PATCH /users/{id}`` (admin)."""
    require_admin(request)
    fields = validation.user_request(await read_json(request), partial=True)
    if _profile(user_id) is None:
        raise ApiError(404, "not_found", f"user {user_id} not found")
    env = make("user.updated", "user", user_id, {"user_id": user_id, **fields}, correlation_id=user_id)
    await produce_and_wait(USERS_TOPIC, user_id, env)
    return json_response({"user_id": user_id, **fields}, 202)


@_routed(USERS_TOPIC, "user_id")
async def get_user(request: web.Request, user_id: str) -> web.Response:
    """``GET /users/{id}``: the email only to the admin (anyone, on a worker with no admin token)."""
    profile = _profile(user_id)
    if profile is None:
        raise ApiError(404, "not_found", f"user {user_id} not found")
    if guard.admin_configured() and not is_admin(request):
        profile = {k: v for k, v in profile.items() if k != "email"}
    return json_response(profile)


def _profile(user_id: str) -> dict[str, Any] | None:
    return _db(user_id).get(USERS, f"user/{user_id}")  # type: ignore[no-any-return]


# --- analytics, dead letters, operations ------------------------------------------


async def analytics_summary(request: web.Request) -> web.Response:
    """``GET /analytics/summary``: the sum of every partition's aggregate."""
    parts = await routing.gather_json("/_local/analytics")
    partial = analytics_domain.merge([p for part in parts for p in part["partials"]])
    counts = analytics_domain.merge_counts([c for part in parts for c in part["status_counts"]])
    return json_response(analytics_domain.summary(partial, counts))


#: How long a worker's slice of a list or the analytics waits for its partitions to take in what was sent so far.
PAGE_SETTLE = 2.0


async def _settle_orders() -> None:
    """Wait (at most :data:`PAGE_SETTLE`) until each orders partition here has handled and committed
    what its topic held when asked: an order whose 202 came back, or that reads a status, is listed
    and counted so (read-your-writes, as for ``GET /orders/{id}``). One that cannot catch up in
    time answers with what it has."""
    await asyncio.gather(*(engine.settled_partition(ORDERS, p, PAGE_SETTLE) for p in engine.serving()))


async def local_analytics(request: web.Request) -> web.Response:
    """This worker's partial aggregates, once they count every order confirmed before the request.

    Read-your-writes as for an order: an order that reads ``confirmed`` has its
    ``order.confirmed`` on the orders topic, so once each partition here has handled and
    committed what its orders topic held when asked, the revenue includes it. A partition
    that cannot catch up within :data:`PAGE_SETTLE` answers with what it has.
    """
    require_peer(request)
    await _settle_orders()
    served = routing.serving(committed)  # after the wait: a partition that moved meanwhile is not claimed
    return json_response(
        {
            "partials": [analytics_partial(db) for _, db in served],
            "status_counts": [status_counts(db) for _, db in served],
            "serving": [p for p, _ in served],
        }
    )


async def list_dead_letters(request: web.Request) -> web.Response:
    """``GET /dlq`` (admin): dead letters across the cluster, ordered by id."""
    require_admin(request)
    query = _query(request, models.ListDeadLetters)
    pages = await routing.gather_json(f"/_local/dlq?{_local_query(query)}")
    return json_response(_merge_pages(pages, "messages", "id", query.limit))


#: What the public dashboard shows of a dead letter: where it failed and why, never its original
#: (which may hold an email or a payment token) nor its key.
DASHBOARD_LETTER_FIELDS = ("id", "stage", "error", "source_topic", "partition", "offset", "status", "dead_lettered_at")


async def dashboard_dead_letters(request: web.Request) -> web.Response:
    """``GET /dashboard/dead_letters``: the last dead letters' positions and errors, for the dashboard.

    Public, as the dashboard is (``GET /dlq`` with the originals needs the admin token).
    """
    pages = await routing.gather_json("/_local/dlq?limit=20")
    page = _merge_pages(pages, "messages", "id", 20)
    rows = [{k: m.get(k) for k in DASHBOARD_LETTER_FIELDS} for m in page["messages"]]
    for row in rows:
        row["error"] = str(row["error"] or "")[:200]
    return json_response({"messages": rows})


async def local_dead_letters(request: web.Request) -> web.Response:
    """This worker's slice of ``GET /dlq``."""
    require_peer(request)
    query = _query(request, models.ListDeadLetters)
    limit, cursor, source, status = query.limit, query.cursor, query.source_topic, query.status
    served = routing.serving(committed)
    rows: list[dict[str, Any]] = []
    for _, db in served:
        n = 0
        for letter in dead_letter_rows(db, cursor or ""):
            if source and letter.get("source_topic") not in (source, _kafka_topic_or_none(source)):
                continue
            if status and letter["status"] != status:
                continue
            rows.append(letter)
            n += 1
            if n > limit:
                break
    rows.sort(key=lambda r: r["id"])
    return json_response({"messages": rows[:limit], "more": len(rows) > limit, "serving": [p for p, _ in served]})


def _kafka_topic_or_none(name: str) -> str | None:
    return kafka_name(name) if name in BY_NAME else None


async def redrive(request: web.Request) -> web.Response:
    """``POST /dlq/redrive`` (admin): body ``{}`` for all, ``{"ids": [...]}`` or ``{"source_topic": ...}``."""
    require_admin(request)
    body = parse(models.Redrive, await read_json(request, empty={}))
    ids, source = body.ids, body.source_topic
    wanted = None if ids is None else set(ids)
    letters = await _all_dead_letters(source)
    chosen = [
        m
        for m in letters
        if m["status"] == "dead"
        and redrivable(m)
        and m.get("source_topic") in LOGICAL  # a letter naming a topic that is not ours has nowhere to go
        and (wanted is None or m["id"] in wanted)
    ]
    for letter in chosen:
        env = make(
            "dead_letter.redrive", "dead_letter", letter["id"], {"dlq_id": letter["id"]}, correlation_id=letter["id"]
        )
        await produce(f"{LOGICAL[letter['source_topic']]}.dlq", letter["id"], env)
    return json_response({"redriven": len(chosen), "ids": [m["id"] for m in chosen]}, 202)


async def _all_dead_letters(source: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = ""
    while True:
        params = {"limit": MAX_LIMIT, "cursor": cursor, **({"source_topic": source} if source else {})}
        query = f"/_local/dlq?{urlencode(params)}"
        pages = await routing.gather_json(query)
        page = _merge_pages(pages, "messages", "id", MAX_LIMIT)
        out.extend(page["messages"])
        if not page["next_cursor"]:
            return out
        cursor = page["next_cursor"]


async def health(request: web.Request) -> web.Response:
    """``GET /health``: the process runs."""
    return json_response({"status": "ok", "worker": routing.my_url()})


async def ready(request: web.Request) -> web.Response:
    """``GET /ready``: 200 once partitions are assigned and tables recovered."""
    if not routing.is_ready():
        return error_response(503, "not_ready", "partitions not assigned or tables still recovering")
    return json_response({"status": "ready", "worker": routing.my_url()})


async def cluster(request: web.Request) -> web.Response:
    """``GET /cluster``: the workers and which partitions each owns."""
    owners: dict[str, list[int]] = {}
    for partition, url in TaskAssignor.owners.items():
        owners.setdefault(url.rstrip("/"), []).append(partition)
    return json_response(
        {
            "me": routing.my_url(),
            "ready": routing.is_ready(),
            "workers": [{"url": u, "partitions": sorted(p)} for u, p in sorted(owners.items())],
            "time": datetime.now().astimezone().isoformat(),
        }
    )


async def openapi_document(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the OpenAPI 3.1 document of the public API."""
    return web.Response(body=openapi.document_bytes(), content_type="application/json")


async def metrics_page(request: web.Request) -> web.Response:
    """``GET /metrics`` in the Prometheus text format, named with its version as scrapers negotiate it."""
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


def register(web_app: web.Application) -> None:
    """Add every route to Faust's aiohttp application."""
    web_app.middlewares.append(errors_middleware)
    r = web_app.router
    r.add_post("/orders", place_order)
    r.add_get("/orders", list_orders)
    r.add_get("/orders/{order_id}", get_order)
    r.add_get("/orders/{order_id}/events", order_events)
    for kind in ("cancel", "ship", "deliver"):
        r.add_post(f"/orders/{{order_id}}/{kind}", _order_command(kind))
    r.add_get("/inventory", list_stock)
    r.add_get("/inventory/{product_id}", get_stock)
    r.add_put("/inventory/{product_id}", set_stock)
    r.add_post("/inventory/{product_id}/restock", restock)
    r.add_post("/users", create_user)
    r.add_patch("/users/{user_id}", update_user)
    r.add_get("/users/{user_id}", get_user)
    r.add_post("/users/{user_id}/_create", create_user_at_owner)
    r.add_get("/analytics/summary", analytics_summary)
    r.add_get("/dlq", list_dead_letters)
    r.add_get("/dashboard/dead_letters", dashboard_dead_letters)
    r.add_post("/dlq/redrive", redrive)
    r.add_get("/health", health)
    r.add_get("/ready", ready)
    r.add_get("/cluster", cluster)
    r.add_get("/metrics", metrics_page)
    r.add_get("/openapi.json", openapi_document)
    r.add_get("/_local/orders", local_orders)
    r.add_get("/_local/inventory", local_stock)
    r.add_get("/_local/analytics", local_analytics)
    r.add_get("/_local/dlq", local_dead_letters)
