"""Request body validation: pure functions returning clean values or a list of problems."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.domain.cards import expiry_valid, luhn_valid, normalize_number
from app.domain.common import MoneyError, to_cents

CURRENCY = re.compile(r"^[A-Z]{3}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_ITEMS = 100
MAX_QUANTITY = 10_000


class Invalid(Exception):
    """The body has invalid fields; ``details`` says which and why."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{d['field']}: {d['message']}" for d in details))
        self.details = details


@dataclass(frozen=True)
class OrderRequest:
    """A validated ``POST /orders`` body (the card number stays here, never further)."""

    user_id: str
    user_email: str | None
    items: list[dict[str, Any]]
    currency: str
    card_number: str


def _problem(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


def _ident(body: dict[str, Any], field: str, problems: list[dict[str, str]], *, where: str | None = None) -> str:
    value = body.get(field)
    name = where or field
    if not isinstance(value, str) or not IDENT.match(value):
        problems.append(_problem(name, "must be 1-128 letters, digits or ._:- characters"))
        return ""
    return value


def order_request(body: Any, *, today: datetime | None = None) -> OrderRequest:
    """Validate a ``POST /orders`` body."""
    if not isinstance(body, dict):
        raise Invalid([_problem("body", "must be a JSON object")])
    problems: list[dict[str, str]] = []
    user_id = _ident(body, "user_id", problems)
    email = body.get("user_email")
    if email is not None and (not isinstance(email, str) or not EMAIL.match(email) or len(email) > 254):
        problems.append(_problem("user_email", "must be an email address"))
        email = None
    currency = body.get("currency", "USD")
    if not isinstance(currency, str) or not CURRENCY.match(currency):
        problems.append(_problem("currency", "must be a three-letter ISO 4217 code such as USD"))
    items = _items(body.get("items"), problems)
    card = _card(body.get("payment"), problems, today or datetime.now(UTC))
    if problems:
        raise Invalid(problems)
    return OrderRequest(user_id, email, items, currency, card)


def _items(raw: Any, problems: list[dict[str, str]]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        problems.append(_problem("items", "must be a non-empty list"))
        return []
    if len(raw) > MAX_ITEMS:
        problems.append(_problem("items", f"at most {MAX_ITEMS} lines"))
        return []
    merged: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(raw):
        where = f"items[{i}]"
        if not isinstance(item, dict):
            problems.append(_problem(where, "must be an object"))
            continue
        pid = _ident(item, "product_id", problems, where=f"{where}.product_id")
        qty = item.get("quantity")
        if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= MAX_QUANTITY:
            problems.append(_problem(f"{where}.quantity", f"must be a whole number from 1 to {MAX_QUANTITY}"))
            qty = 0
        try:
            price = to_cents(item.get("price"))
        except MoneyError as exc:
            problems.append(_problem(f"{where}.price", str(exc)))
            price = -1
        if not pid or qty <= 0 or price < 0:
            continue
        if pid in merged:
            if merged[pid]["price_cents"] != price:
                problems.append(_problem(f"{where}.price", "differs from an earlier line of the same product"))
                continue
            merged[pid]["quantity"] += qty
            if merged[pid]["quantity"] > MAX_QUANTITY:
                problems.append(_problem(f"{where}.quantity", f"lines of one product add up to over {MAX_QUANTITY}"))
        else:
            merged[pid] = {"product_id": pid, "quantity": qty, "price_cents": price}
    return list(merged.values())


def _card(raw: Any, problems: list[dict[str, str]], today: datetime) -> str:
    if not isinstance(raw, dict):
        problems.append(_problem("payment", "must be an object with method, card_number, expiry, cvv"))
        return ""
    if raw.get("method", "card") != "card":
        problems.append(_problem("payment.method", "only 'card' is supported"))
    number = raw.get("card_number")
    card = normalize_number(number) if isinstance(number, str) else ""
    if not luhn_valid(card):
        problems.append(_problem("payment.card_number", "is not a valid card number"))
    expiry = raw.get("expiry")
    if not isinstance(expiry, str) or not expiry_valid(expiry, today.year, today.month):
        problems.append(_problem("payment.expiry", "must be MM/YY and not in the past"))
    cvv = raw.get("cvv")
    if not isinstance(cvv, str) or not cvv.isdigit() or len(cvv) not in (3, 4):
        problems.append(_problem("payment.cvv", "must be 3 or 4 digits"))
    return card


def non_negative_int(body: Any, field: str, *, minimum: int = 0) -> int:
    """Validate ``{field: n}`` with a whole number ``n >= minimum``."""
    if not isinstance(body, dict):
        raise Invalid([_problem("body", "must be a JSON object")])
    value = body.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value > 1_000_000_000:
        raise Invalid([_problem(field, f"must be a whole number of at least {minimum}")])
    return value


def user_request(body: Any, *, partial: bool) -> dict[str, Any]:
    """Validate a ``POST /users`` (``partial=False``) or ``PATCH /users/{id}`` body."""
    if not isinstance(body, dict):
        raise Invalid([_problem("body", "must be a JSON object")])
    problems: list[dict[str, str]] = []
    out: dict[str, Any] = {}
    if not partial and "user_id" in body:
        out["user_id"] = _ident(body, "user_id", problems)
    if "email" in body or not partial:
        email = body.get("email")
        if not isinstance(email, str) or not EMAIL.match(email) or len(email) > 254:
            problems.append(_problem("email", "must be an email address"))
        else:
            out["email"] = email
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or len(name) > 200:
            problems.append(_problem("name", "must be a string of at most 200 characters"))
        else:
            out["name"] = name
    if partial and not out and not problems:
        problems.append(_problem("body", "nothing to update: give email and/or name"))
    if problems:
        raise Invalid(problems)
    return out


def ship_request(body: Any) -> dict[str, str]:
    """Validate a ``POST /orders/{id}/ship`` body."""
    if not isinstance(body, dict):
        raise Invalid([_problem("body", "must be a JSON object")])
    problems = []
    out = {}
    for field in ("carrier", "tracking_number"):
        value = body.get(field)
        if not isinstance(value, str) or not 1 <= len(value.strip()) <= 100:
            problems.append(_problem(field, "must be a non-empty string of at most 100 characters"))
        else:
            out[field] = value.strip()
    if problems:
        raise Invalid(problems)
    return out
