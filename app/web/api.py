"""The HTTP API of SPEC §4, on Faust's own aiohttp server.

Reads and state-checked commands for one key go to the key's owner
(:mod:`app.web.routing`); lists and the analytics summary scatter to every worker's
``/_local/...`` endpoint and merge. Writes are events produced to Kafka; the
answer is 202 once the broker has them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from app import codec, metrics
from app.domain import analytics as analytics_domain
from app.domain import inventory as inventory_domain
from app.domain import orders as orders_domain
from app.domain.common import INVENTORY, ORDERS
from app.domain.common import USERS as USERS_TOPIC
from app.engine.assignor import TaskAssignor
from app.engine.store import PartitionDB
from app.main import engine, settings
from app.topics import BY_NAME, LOGICAL, kafka_name
from app.web import routing, validation
from app.web.routing import FORWARDED, Unavailable
from schemas.envelope import Envelope, derived_id, make, parse_ts
from schemas.registry import current_version
from tables import (
    STOCK,
    USERS,
    analytics_partial,
    committed,
    committed_for,
    dead_letter_rows,
    order_history,
    order_rows,
    order_state,
    status_counts,
    stock_rows,
)

log = logging.getLogger("orderstream.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IDEMPOTENCY_NS = uuid.UUID("0b7f4f7c-1c1e-4c0e-8a4b-3b8f5f0f9a11")
MAX_LIMIT = 500


class ApiError(Exception):
    """An error answer: status, code, message, details."""

    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Answer with an orjson body."""
    return web.Response(body=codec.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, details: list[Any] | None = None) -> web.Response:
    """Answer with the SPEC's error shape."""
    headers = {"Retry-After": routing.RETRY_AFTER} if status == 503 else None
    return json_response({"error": code, "message": message, "details": details or []}, status, headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; never a traceback."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
    except validation.Invalid as exc:
        response = error_response(422, "invalid", "the request has invalid fields", exc.details)
    except Unavailable as exc:
        response = error_response(503, "unavailable", f"{exc}; retry shortly")
    except web.HTTPRequestEntityTooLarge:
        response = error_response(413, "too_large", f"the body is larger than {settings.max_body_bytes} bytes")
    except web.HTTPException as exc:
        response = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.rel_url.path)
        response = error_response(500, "internal", "internal error")
    metrics.HTTP_REQUESTS.labels(route, str(response.status)).inc()
    return response


async def read_json(request: web.Request) -> Any:
    """Read and parse the JSON body: 413 when too large, 400 when not JSON."""
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise ApiError(413, "too_large", f"the body is larger than {settings.max_body_bytes} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"the body is larger than {settings.max_body_bytes} bytes") from None
    if len(raw) > settings.max_body_bytes:
        raise ApiError(413, "too_large", f"the body is larger than {settings.max_body_bytes} bytes")
    try:
        return codec.loads(raw)
    except ValueError:
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None


def require_admin(request: web.Request) -> None:
    """Enforce ``Authorization: Bearer $ORDERSTREAM_ADMIN_TOKEN`` when a token is set."""
    token = settings.admin_token
    if not token:
        return
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "unauthorized", "this endpoint needs Authorization: Bearer <admin token>")


async def produce(topic: str, key: str, env: Envelope) -> None:
    """Send an envelope to a logical topic and wait until the broker has it."""
    await engine.produce(topic, key, codec.dumps(env))


def _db(key: str) -> PartitionDB:
    """The committed state of ``key``'s partition here (``check_local`` passed), or a 503."""
    db = committed_for(key)
    if db is None:
        raise Unavailable("this worker does not serve the key's partition yet")
    return db


async def produce_and_wait(topic: str, key: str, env: Envelope) -> bool:
    """Produce a command, then wait (at most :data:`APPLIED_WAIT`) until this worker committed its effect."""
    applied = asyncio.ensure_future(engine.waiters.wait(env["id"], APPLIED_WAIT))
    await asyncio.sleep(0)  # the waiter is registered before the command can be handled
    try:
        await produce(topic, key, env)
    except BaseException:
        applied.cancel()
        raise
    return await applied


def _limit(request: web.Request, default: int = 50) -> int:
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise validation.Invalid([{"field": "limit", "message": f"must be a whole number from 1 to {MAX_LIMIT}"}])
    return int(raw)


def _routed(
    topic: str, key_param: str
) -> Callable[[Callable[[web.Request, str], Awaitable[web.StreamResponse]]], Handler]:
    """Run the handler on the worker that owns the key; forward the request there otherwise."""

    def deco(local: Callable[[web.Request, str], Awaitable[web.StreamResponse]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            key = request.match_info[key_param]
            owner = routing.owner_of(topic, key)
            if owner != routing.my_url():
                if request.headers.get(FORWARDED):
                    raise Unavailable("the key's owner changed while the request was forwarded")
                return await routing.forward(request, owner)
            routing.check_local(topic, key)
            return await local(request, key)

        handler.__name__ = local.__name__
        return handler

    return deco


# --- orders -----------------------------------------------------------------------


async def place_order(request: web.Request) -> web.Response:
    """``POST /orders``: validate, tokenize the card, produce ``order.placed``."""
    body = await read_json(request)
    order = validation.order_request(body)
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not 1 <= len(idem) <= 200:
        raise validation.Invalid([{"field": "Idempotency-Key", "message": "must be 1-200 characters"}])
    # The same key from the same user names the same order: a retried POST creates nothing new.
    order_id = str(uuid.uuid5(IDEMPOTENCY_NS, f"{order.user_id}\n{idem}")) if idem else str(uuid.uuid4())
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
    env = make(
        "order.placed",
        "order",
        order_id,
        payload,
        correlation_id=order_id,
        event_id=derived_id(f"placed/{order_id}", 0),
        version=current_version("order.placed"),
        metadata={"idempotency_key": idem} if idem else {},
    )
    await produce(ORDERS, order_id, env)
    metrics.ORDERS_PLACED.inc()
    return json_response({"order_id": order_id, "status": "pending"}, 202, {"Location": f"/orders/{order_id}"})


@_routed(ORDERS, "order_id")
async def get_order(request: web.Request, order_id: str) -> web.Response:
    """``GET /orders/{id}`` with ``?wait=`` and ``?as_of=``."""
    as_of = request.query.get("as_of")
    if as_of is not None:
        return json_response(_order_as_of(order_id, as_of))
    wait = request.query.get("wait")
    deadline = time.monotonic()
    if wait is not None:
        try:
            deadline += min(max(float(wait), 0.0), 30.0)
        except ValueError:
            raise validation.Invalid([{"field": "wait", "message": "must be a number of seconds"}]) from None
    while True:
        state = order_state(_db(order_id), order_id)
        if state is not None and (wait is None or orders_domain.is_final(state)):
            return json_response(orders_domain.to_view(state))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Woken by the commit of this order's next entry; re-checked at least every second.
        await engine.waiters.wait(order_id, min(remaining, 1.0))
    if state is None:
        raise ApiError(404, "not_found", f"order {order_id} not found")
    return json_response(orders_domain.to_view(state))


def _order_as_of(order_id: str, as_of: str) -> dict[str, Any]:
    try:
        instant = parse_ts(as_of)
    except ValueError:
        raise validation.Invalid([{"field": "as_of", "message": "must be an ISO-8601 instant"}]) from None
    history = order_history(_db(order_id), order_id)
    events: list[Any] = [e for e in history if parse_ts(e["timestamp"]) <= instant]
    state = orders_domain.fold(events, settings.payment_timeout, settings.pending_timeout)
    if state is None:
        raise ApiError(404, "not_found", f"order {order_id} did not exist at {as_of}")
    return {**orders_domain.to_view(state), "as_of": as_of}


@_routed(ORDERS, "order_id")
async def order_events(request: web.Request, order_id: str) -> web.Response:
    """``GET /orders/{id}/events``: the order's events in causal order."""
    history = order_history(_db(order_id), order_id)
    if not history:
        raise ApiError(404, "not_found", f"order {order_id} not found")
    return json_response({"order_id": order_id, "events": history})


#: How long a command's 202 waits for its stage to apply it, so the next request sees it
#: (ship then deliver; create a user then update it).
APPLIED_WAIT = 5.0


def _order_command(kind: str) -> Handler:
    allowed = {"cancel": orders_domain.can_cancel, "ship": orders_domain.can_ship, "deliver": orders_domain.can_deliver}
    check = allowed[kind]

    @_routed(ORDERS, "order_id")
    async def command(request: web.Request, order_id: str) -> web.Response:
        payload: dict[str, Any] = {"order_id": order_id}
        if kind == "ship":
            payload.update(validation.ship_request(await read_json(request)))
        elif kind == "cancel":
            payload["reason"] = "customer_cancelled"
        state = order_state(_db(order_id), order_id)
        if state is None:
            raise ApiError(404, "not_found", f"order {order_id} not found")
        if not check(state):
            raise ApiError(
                409, "conflict", f"cannot {kind} an order that is {state['status']}", [{"status": state["status"]}]
            )
        env = make(f"order.{kind}", "order", order_id, payload, correlation_id=order_id)
        if await produce_and_wait(ORDERS, order_id, env):
            state = order_state(_db(order_id), order_id) or state
        return json_response({"order_id": order_id, "status": state["status"], "accepted": kind}, 202)

    command.__name__ = f"{kind}_order"
    return command


async def list_orders(request: web.Request) -> web.Response:
    """``GET /orders``: one page across all workers, ordered by order id."""
    limit = _limit(request)
    pages = await routing.gather_json(f"/_local/orders?{request.query_string}")
    return json_response(_merge_pages(pages, "orders", "order_id", limit))


def _merge_pages(pages: list[Any], field: str, key: str, limit: int) -> dict[str, Any]:
    rows = sorted((row for page in pages for row in page[field]), key=lambda r: r[key])
    more = len(rows) > limit or any(page.get("more") for page in pages)
    rows = rows[:limit]
    return {field: rows, "next_cursor": rows[-1][key] if more and rows else None}


async def local_orders(request: web.Request) -> web.Response:
    """This worker's slice of ``GET /orders``."""
    limit = _limit(request)
    serving = routing.serving()
    status, user_id, cursor = (request.query.get(k) for k in ("status", "user_id", "cursor"))
    rows: list[dict[str, Any]] = []
    for p in serving:
        db = committed(p)
        if db is not None:
            rows.extend(order_rows(db, status=status, user_id=user_id, cursor=cursor or "", limit=limit + 1))
    rows.sort(key=lambda s: s["order_id"])
    page = [orders_domain.to_view(s) for s in rows[:limit]]
    return json_response({"orders": page, "more": len(rows) > limit, "serving": serving})


# --- inventory --------------------------------------------------------------------


@_routed(INVENTORY, "product_id")
async def get_stock(request: web.Request, product_id: str) -> web.Response:
    """``GET /inventory/{id}``."""
    return json_response(inventory_domain.to_view(product_id, _db(product_id).get(STOCK, f"stock/{product_id}")))


@_routed(INVENTORY, "product_id")
async def set_stock(request: web.Request, product_id: str) -> web.Response:
    """``PUT /inventory/{id}`` (admin): set the units on hand."""
    require_admin(request)
    _product_id_ok(product_id)
    on_hand = validation.non_negative_int(await read_json(request), "on_hand")
    stock = _db(product_id).get(STOCK, f"stock/{product_id}") or inventory_domain.empty_stock()
    if on_hand < stock["reserved"]:
        raise ApiError(409, "conflict", f"{stock['reserved']} units are reserved; on_hand cannot go below that")
    env = make(
        "inventory.set_stock",
        "product",
        product_id,
        {"product_id": product_id, "on_hand": on_hand},
        correlation_id=product_id,
    )
    await produce_and_wait(INVENTORY, product_id, env)
    return json_response({"product_id": product_id, "on_hand": on_hand, "status": "accepted"}, 202)


@_routed(INVENTORY, "product_id")
async def restock(request: web.Request, product_id: str) -> web.Response:
    """``POST /inventory/{id}/restock`` (admin): add units."""
    require_admin(request)
    _product_id_ok(product_id)
    quantity = validation.non_negative_int(await read_json(request), "quantity", minimum=1)
    env = make(
        "inventory.restock",
        "product",
        product_id,
        {"product_id": product_id, "quantity": quantity},
        correlation_id=product_id,
    )
    await produce_and_wait(INVENTORY, product_id, env)
    return json_response({"product_id": product_id, "quantity": quantity, "status": "accepted"}, 202)


def _product_id_ok(product_id: str) -> None:
    if not validation.IDENT.match(product_id):
        raise validation.Invalid(
            [{"field": "product_id", "message": "must be 1-128 letters, digits or ._:- characters"}]
        )


async def list_stock(request: web.Request) -> web.Response:
    """``GET /inventory``: one page of products across all workers."""
    limit = _limit(request)
    pages = await routing.gather_json(f"/_local/inventory?{request.query_string}")
    return json_response(_merge_pages(pages, "products", "product_id", limit))


async def local_stock(request: web.Request) -> web.Response:
    """This worker's slice of ``GET /inventory``."""
    limit = _limit(request)
    serving = routing.serving()
    cursor = request.query.get("cursor") or ""
    rows: list[tuple[str, Any]] = []
    for p in serving:
        db = committed(p)
        if db is not None:
            rows.extend(stock_rows(db, cursor, limit + 1))
    rows.sort(key=lambda r: r[0])
    page = [inventory_domain.to_view(pid, s) for pid, s in rows[:limit]]
    return json_response({"products": page, "more": len(rows) > limit, "serving": serving})


# --- users ------------------------------------------------------------------------


async def create_user(request: web.Request) -> web.StreamResponse:
    """``POST /users``: the owner of the (given or new) user id checks it is new and creates it."""
    fields = validation.user_request(await read_json(request), partial=False)
    user_id = fields.pop("user_id", None) or str(uuid.uuid4())
    owner = routing.owner_of(USERS_TOPIC, user_id)
    if owner != routing.my_url():
        return await routing.forward(request, owner, path=f"/users/{user_id}/_create")
    return await _create_user_locally(user_id, fields)


async def create_user_at_owner(request: web.Request) -> web.Response:
    """The owner's half of ``POST /users`` (forwarded here with the id in the path)."""
    user_id = request.match_info["user_id"]
    if routing.owner_of(USERS_TOPIC, user_id) != routing.my_url():
        raise Unavailable("the user's owner changed while the request was forwarded")
    fields = validation.user_request(await read_json(request), partial=False)
    fields.pop("user_id", None)
    return await _create_user_locally(user_id, fields)


async def _create_user_locally(user_id: str, fields: dict[str, Any]) -> web.Response:
    routing.check_local(USERS_TOPIC, user_id)
    if _profile(user_id) is not None:
        raise ApiError(409, "conflict", f"user {user_id} already exists")
    env = make("user.created", "user", user_id, {"user_id": user_id, **fields}, correlation_id=user_id)
    await produce_and_wait(USERS_TOPIC, user_id, env)
    return json_response({"user_id": user_id, **fields}, 202, {"Location": f"/users/{user_id}"})


@_routed(USERS_TOPIC, "user_id")
async def update_user(request: web.Request, user_id: str) -> web.Response:
    """``PATCH /users/{id}``."""
    fields = validation.user_request(await read_json(request), partial=True)
    if _profile(user_id) is None:
        raise ApiError(404, "not_found", f"user {user_id} not found")
    env = make("user.updated", "user", user_id, {"user_id": user_id, **fields}, correlation_id=user_id)
    await produce_and_wait(USERS_TOPIC, user_id, env)
    return json_response({"user_id": user_id, **fields}, 202)


@_routed(USERS_TOPIC, "user_id")
async def get_user(request: web.Request, user_id: str) -> web.Response:
    """``GET /users/{id}``."""
    profile = _profile(user_id)
    if profile is None:
        raise ApiError(404, "not_found", f"user {user_id} not found")
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


async def local_analytics(request: web.Request) -> web.Response:
    """This worker's partial aggregates."""
    serving = routing.serving()
    dbs = [db for db in map(committed, serving) if db is not None]
    return json_response(
        {
            "partials": [analytics_partial(db) for db in dbs],
            "status_counts": [status_counts(db) for db in dbs],
            "serving": serving,
        }
    )


async def list_dead_letters(request: web.Request) -> web.Response:
    """``GET /dlq``: dead letters across the cluster, ordered by id."""
    limit = _limit(request)
    pages = await routing.gather_json(f"/_local/dlq?{request.query_string}")
    return json_response(_merge_pages(pages, "messages", "id", limit))


async def local_dead_letters(request: web.Request) -> web.Response:
    """This worker's slice of ``GET /dlq``."""
    limit = _limit(request)
    serving = routing.serving()
    cursor, source, status = (request.query.get(k) for k in ("cursor", "source_topic", "status"))
    rows: list[dict[str, Any]] = []
    for p in serving:
        db = committed(p)
        if db is None:
            continue
        n = 0
        for letter in dead_letter_rows(db, cursor or ""):
            if source and letter["source_topic"] not in (source, _kafka_topic_or_none(source)):
                continue
            if status and letter["status"] != status:
                continue
            rows.append(letter)
            n += 1
            if n > limit:
                break
    rows.sort(key=lambda r: r["id"])
    return json_response({"messages": rows[:limit], "more": len(rows) > limit, "serving": serving})


def _kafka_topic_or_none(name: str) -> str | None:
    return kafka_name(name) if name in BY_NAME else None


async def redrive(request: web.Request) -> web.Response:
    """``POST /dlq/redrive`` (admin): body ``{}`` for all, ``{"ids": [...]}`` or ``{"source_topic": ...}``."""
    require_admin(request)
    raw = await request.read()
    body = codec.loads(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise validation.Invalid([{"field": "body", "message": "must be a JSON object"}])
    ids = body.get("ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise validation.Invalid([{"field": "ids", "message": "must be a list of dead-letter ids"}])
    source = body.get("source_topic")
    if source is not None and not isinstance(source, str):
        raise validation.Invalid([{"field": "source_topic", "message": "must be a topic name"}])
    letters = await _all_dead_letters(source)
    chosen = [
        m
        for m in letters
        if m["status"] == "dead" and m.get("original_kind") != "truncated" and (ids is None or m["id"] in ids)
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
        query = f"/_local/dlq?limit={MAX_LIMIT}&cursor={cursor}" + (f"&source_topic={source}" if source else "")
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


async def metrics_page(request: web.Request) -> web.Response:
    """``GET /metrics`` in the Prometheus text format."""
    return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")


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
    r.add_post("/dlq/redrive", redrive)
    r.add_get("/health", health)
    r.add_get("/ready", ready)
    r.add_get("/cluster", cluster)
    r.add_get("/metrics", metrics_page)
    r.add_get("/_local/orders", local_orders)
    r.add_get("/_local/inventory", local_stock)
    r.add_get("/_local/analytics", local_analytics)
    r.add_get("/_local/dlq", local_dead_letters)
