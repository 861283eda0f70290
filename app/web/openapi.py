"""The OpenAPI 3.1 document of the public API, generated from the models that validate it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.web import models as m

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "the request could not be read: a body that is not valid JSON, or a request line or header over 8 KB",
    401: "the admin bearer token is missing or wrong",
    404: "not found",
    409: "the current state does not allow it",
    405: "the method is not allowed on this path (see Allow)",
    408: "the body did not arrive within 10 s",
    413: "the body is larger than 64 KiB",
    415: "the body is not Content-Type: application/json",
    417: "an Expect header other than 100-continue",
    422: "invalid fields (details name them)",
    501: "a Transfer-Encoding other than chunked alone",
    503: "not answerable yet (owner unknown, rebalancing, recovering) or over a cap; see Retry-After",
}


@dataclass(frozen=True)
class Op:
    """One public operation."""

    method: str
    path: str
    summary: str
    ok: int
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    admin: bool = False
    errors: tuple[int, ...] = (422, 503)
    headers: dict[str, Any] = field(default_factory=dict)
    #: The OK answer's content when it is not one of the models (a page, Prometheus text, a document).
    content: dict[str, Any] | None = None
    #: OpenAPI links of the OK answer: ``{name: (operationId, {parameter: runtime expression})}``.
    links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)


_BODY_ERRORS = (400, 408, 413, 415, 417, 422, 501, 503)
_ADMIN_BODY_ERRORS = (400, 401, 408, 413, 415, 417, 422, 501, 503)


def _links(parameter: str, targets: dict[str, str]) -> dict[str, tuple[str, dict[str, str]]]:
    """Links from an answer naming ``parameter`` in its body to ``{name: operationId}`` that take it in their
    path: what a client (or a stateful fuzzer) may do next with the order, product or user it names."""
    expression = {parameter: f"$response.body#/{parameter}"}
    return {name: (operation, expression) for name, operation in targets.items()}


_ORDER_LINKS = _links(
    "order_id",
    {
        "GetOrder": "get_orders_order_id",
        "GetOrderEvents": "get_orders_order_id_events",
        "CancelOrder": "post_orders_order_id_cancel",
        "ShipOrder": "post_orders_order_id_ship",
        "DeliverOrder": "post_orders_order_id_deliver",
    },
)
_PRODUCT_LINKS = _links(
    "product_id",
    {"GetStock": "get_inventory_product_id", "SetStock": "put_inventory_product_id",
     "Restock": "post_inventory_product_id_restock"},
)  # fmt: skip
_USER_LINKS = _links("user_id", {"GetUser": "get_users_user_id", "UpdateUser": "patch_users_user_id"})


def _json_object(description: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"type": "object", "description": description}}}


OPERATIONS = [
    Op(
        "post",
        "/orders",
        "Place an order (202); the same Idempotency-Key from the same user names the same order",
        202,
        m.Placed,
        body=m.PlaceOrder,
        errors=_BODY_ERRORS,
        headers={"Location": {"schema": {"type": "string"}}},
        links=_ORDER_LINKS,
    ),
    Op("get", "/orders", "A page of orders across the cluster", 200, m.OrderPage, query=m.ListOrders),
    Op(
        "get",
        "/orders/{order_id}",
        "The order's read model; ?wait long-polls until final, ?as_of rebuilds it",
        200,
        m.OrderView,
        query=m.OrderQuery,
        errors=(404, 422, 503),
    ),
    Op("get", "/orders/{order_id}/events", "The order's events in causal order", 200, m.OrderEvents, errors=(404, 503)),
    Op("post", "/orders/{order_id}/cancel", "Cancel while pending or reserved (optional body: the reason)", 202,
       m.CommandAccepted, body=m.CancelOrder, errors=(*_BODY_ERRORS, 404, 409), links=_ORDER_LINKS),
    Op("post", "/orders/{order_id}/ship", "Ship a confirmed order (admin)", 202, m.CommandAccepted, body=m.ShipOrder,
       admin=True, errors=(*_ADMIN_BODY_ERRORS, 404, 409), links=_ORDER_LINKS),
    Op("post", "/orders/{order_id}/deliver", "Deliver a shipped order (admin)", 202, m.CommandAccepted, admin=True,
       errors=(*_ADMIN_BODY_ERRORS, 404, 409)),
    Op("get", "/inventory", "A page of products across the cluster", 200, m.StockPage, query=m.ListStock),
    Op("get", "/inventory/{product_id}", "A product's stock (zeros when unknown)", 200, m.StockView, errors=(503,)),
    Op("put", "/inventory/{product_id}", "Set the units on hand (admin)", 202, m.StockAccepted, body=m.SetStock,
       admin=True, errors=(*_ADMIN_BODY_ERRORS, 409), links=_PRODUCT_LINKS),
    Op("post", "/inventory/{product_id}/restock", "Add units (admin); 409 past the bound on hand", 202,
       m.StockAccepted, body=m.Restock, admin=True, errors=(*_ADMIN_BODY_ERRORS, 409), links=_PRODUCT_LINKS),
    Op("post", "/users", "Create a user (admin)", 202, m.UserView, body=m.CreateUser, admin=True,
       errors=(*_ADMIN_BODY_ERRORS, 409), headers={"Location": {"schema": {"type": "string"}}}, links=_USER_LINKS),
    Op("patch", "/users/{user_id}", "Change a user's email and/or name (admin)", 202, m.UserView, body=m.UpdateUser,
       admin=True, errors=(*_ADMIN_BODY_ERRORS, 404)),
    Op("get", "/users/{user_id}", "A user's profile", 200, m.UserView, errors=(404, 503)),
    Op("get", "/analytics/summary", "Orders by status, revenue, top products", 200, m.AnalyticsSummary, errors=(503,)),
    Op("get", "/dlq", "Dead letters across the cluster (admin)", 200, m.DeadLetterPage, query=m.ListDeadLetters,
       admin=True, errors=(401, 422, 503)),
    Op("post", "/dlq/redrive", "Re-inject dead letters once (admin); an empty body means all", 202, m.Redriven,
       body=m.Redrive, admin=True, errors=_ADMIN_BODY_ERRORS),
    Op("get", "/health", "200 while the process runs", 200, m.Health, errors=()),
    Op("get", "/ready", "200 once partitions are assigned and tables recovered", 200, m.Health, errors=(503,)),
    Op("get", "/cluster", "The workers and the partitions each owns", 200, None, errors=(),
       content=_json_object("{me, ready, workers: [{url, partitions}], time}")),
    Op("get", "/metrics", "Prometheus metrics of this worker", 200, None, errors=(),
       content={"text/plain; version=0.0.4": {"schema": {"type": "string"}}}),
    Op("get", "/", "The live dashboard (HTML)", 200, None, errors=(),
       content={"text/html": {"schema": {"type": "string"}}}),
    Op("get", "/dashboard/data", "What the dashboard shows, across the cluster", 200, None, errors=(503,),
       content=_json_object("orders by status, revenue per minute, stock, dead letters, workers, lag, throughput")),
    Op("get", "/dashboard/dead_letters", "The last 20 dead letters' positions and errors (no originals)", 200, None,
       errors=(503,), content=_json_object("{messages: [{id, stage, error, source_topic, partition, offset}]}")),
    Op("get", "/openapi.json", "This document", 200, None, errors=(),
       content={"application/json": {"schema": {"type": "object", "description": "OpenAPI 3.1"}}}),
]  # fmt: skip


#: Pages a browser, probe or scraper may call with parameters of its own: they take none and ignore any.
QUERY_IGNORED = frozenset({"/", "/health", "/ready", "/metrics", "/openapi.json"})

#: ``(METHOD, path)`` → operation, for the edge's checks (``HEAD`` is a ``GET``).
BY_ROUTE = {(op.method.upper(), op.path): op for op in OPERATIONS}


def refuses_query(op: Op) -> bool:
    """Whether any query parameter is a 422 here: the operation takes none and is not an ignoring page."""
    return op.query is None and op.path not in QUERY_IGNORED


def _path_params(op: Op) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    any_key = {"type": "string", "minLength": 1, "maxLength": m.MAX_KEY}
    # A product is read and written under an identifier only (an id no product can have is a
    # 422, read or write; probe 25: the read was documented as taking any key).
    ident = {"type": "string", "pattern": m.IDENT_PATTERN}
    return [
        {"name": n, "in": "path", "required": True, "schema": ident if n == "product_id" else any_key} for n in names
    ]


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _non_null(prop)}
        for name, prop in schema["properties"].items()
    ]


def _non_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a value: drop the ``null`` branch of an optional one."""
    options = [o for o in prop.get("anyOf", ()) if o.get("type") != "null"]
    if len(options) == 1:
        rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default", "title")}
        return {**options[0], **rest}
    return prop


def build() -> dict[str, Any]:
    """Return the OpenAPI document."""
    bodies = [(op.body, "validation") for op in OPERATIONS if op.body]
    answers = [(op.response, "serialization") for op in OPERATIONS if op.response] + [(m.Error, "serialization")]
    refs, defs = models_json_schema(list(dict.fromkeys(bodies + answers)), ref_template=REF)  # type: ignore[arg-type]

    def content(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return {"application/json": {"schema": refs[(model, mode)]}}  # type: ignore[index]

    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        if op.response or op.content:
            ok: dict[str, Any] = {
                "description": "OK",
                "content": op.content if op.response is None else content(op.response, "serialization"),
            }
            if op.headers:
                ok["headers"] = op.headers
            if op.links:
                ok["links"] = {
                    name: {"operationId": target, "parameters": parameters}
                    for name, (target, parameters) in op.links.items()
                }
            responses[str(op.ok)] = ok
        # Any request may be one the HTTP parser refuses (a request target past 8 KB): 400.
        statuses = sorted({400, *op.errors, *((422,) if "{" in op.path or refuses_query(op) else ())})
        for status in statuses:
            err: dict[str, Any] = {"description": ERRORS[status], "content": content(m.Error, "serialization")}
            if status == 503:
                err["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
            responses[str(status)] = err
        operation: dict[str, Any] = {
            "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "summary": op.summary,
            "parameters": _path_params(op) + (_query_params(op.query) if op.query else []),
            "responses": responses,
        }
        if op.path == "/orders" and op.method == "post":
            operation["parameters"].append(
                {"name": "Idempotency-Key", "in": "header", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[\\x20-\\x7e]+$"}}
            )  # fmt: skip
        if op.body:
            optional = op.body in (m.Redrive, m.CancelOrder)
            operation["requestBody"] = {"required": not optional, "content": content(op.body, "validation")}
        if op.admin:
            operation["security"] = [{"admin": []}]
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orderstream",
            "version": "1",
            "description": "Event-driven order processing. Admin operations need the bearer token "
            "when ORDERSTREAM_ADMIN_TOKEN is set; /metrics (Prometheus text) and / (dashboard) are not JSON. "
            "A method a path does not have is a 405 naming the allowed ones in Allow.",
        },
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
        },
    }


def document_bytes() -> bytes:
    """The document, serialized once a month (its card expiry pattern is of the current month)."""
    today = datetime.now(UTC)
    return _document_bytes(today.year, today.month)


@lru_cache(maxsize=2)
def _document_bytes(year: int, month: int) -> bytes:
    return orjson.dumps(build())
