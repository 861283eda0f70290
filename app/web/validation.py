"""Validate request bodies and queries with the models of :mod:`app.web.models`; problems name their field."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.domain.common import parse_money
from app.web import models
from app.web.models import IDENT, LocatedError

M = TypeVar("M", bound=BaseModel)


class Invalid(Exception):
    """The request has invalid fields; ``details`` says which and why (never the value given)."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{d['field']}: {d['message']}" for d in details))
        self.details = details


@dataclass(frozen=True)
class OrderRequest:
    """A validated ``POST /orders`` body (the card number stays here, never further, never in a repr)."""

    user_id: str
    user_email: str | None
    items: list[dict[str, Any]]
    currency: str
    card_number: str = field(repr=False)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out if loc else "body"  # a parameter with an empty name (``?=x``) is named as it came


def _details(exc: ValidationError) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for err in exc.errors(include_input=False, include_url=False):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedError):
            problem = {"field": _path(cause.loc), "message": cause.message}
        else:
            problem = {"field": _path(tuple(err["loc"])), "message": err["msg"]}
        if err["type"] in ("model_type", "model_attributes_type", "dict_type") and not err["loc"]:
            problem = {"field": "body", "message": "must be a JSON object"}
        if problem not in out:
            out.append(problem)
    return out


def parse(model: type[M], data: Any, context: dict[str, Any] | None = None) -> M:
    """Validate ``data`` (decoded JSON, or a query mapping) into ``model`` or raise :class:`Invalid`."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise Invalid(_details(exc)) from None


def order_request(body: Any, *, today: datetime | None = None) -> OrderRequest:
    """Validate a ``POST /orders`` body; lines of one product are merged, prices in cents."""
    order = parse(models.PlaceOrder, body, {"today": today} if today else None)
    merged: dict[str, dict[str, Any]] = {}
    for line in order.items:
        if line.product_id in merged:
            merged[line.product_id]["quantity"] += line.quantity
        else:
            merged[line.product_id] = {
                "product_id": line.product_id,
                "quantity": line.quantity,
                "price_cents": parse_money(line.price),
            }
    return OrderRequest(
        order.user_id, order.user_email, list(merged.values()), order.currency, order.payment.card_number
    )


def product_id_ok(product_id: str) -> str:
    """Return ``product_id`` if it is a valid identifier, else raise :class:`Invalid`."""
    if not IDENT.fullmatch(product_id):
        raise Invalid([{"field": "product_id", "message": "must be 1-128 letters, digits or ._:- characters"}])
    return product_id


def user_request(body: Any, *, partial: bool) -> dict[str, Any]:
    """Validate a ``POST /users`` (``partial=False``) or ``PATCH /users/{id}`` body; only given fields return."""
    model: type[BaseModel] = models.UpdateUser if partial else models.CreateUser
    return parse(model, body).model_dump(exclude_none=True)


def cancel_request(body: Any) -> dict[str, str]:
    """Validate the body sent with a ``POST /orders/{id}/cancel``: ``{"note": ...}`` or ``{}``.

    JSON ``null`` is a body too (a 422); the caller handles a request without one.
    """
    reason = parse(models.CancelOrder, body).reason
    return {"note": reason} if reason else {}


def ship_request(body: Any) -> dict[str, str]:
    """Validate a ``POST /orders/{id}/ship`` body (trimmed)."""
    return parse(models.ShipOrder, body).model_dump()
