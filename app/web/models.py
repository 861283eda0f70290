"""Every request and response of the HTTP API as one pydantic model: validated here, published as OpenAPI.

Bounds (SPEC §4 "documented bounds"): a price is a decimal string of ASCII digits with at
most two decimals, from ``"0"`` to ``"1000000.00"``; a line's quantity is 1..10,000 (lines of
one product merged, their sum too); at most 100 lines; an order's total at most
:data:`MAX_TOTAL_CENTS` (10^11 cents), so every sum downstream (revenue of 90 million
maximal orders) stays inside a signed 64-bit integer, which is what orjson writes.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError

from app.domain.cards import expiry_pattern, expiry_valid, luhn_valid, normalize_number
from app.domain.common import (
    DEFAULT_CURRENCY,
    MAX_ITEMS,
    MAX_PRICE_CENTS,
    MAX_QUANTITY,
    MAX_TOTAL_CENTS,
    MoneyError,
    parse_money,
    payable,
    payable_codes,
)
from app.domain.inventory import MAX_ON_HAND
from schemas.envelope import parse_ts

MAX_STOCK = MAX_ON_HAND
MAX_LIMIT = 500
MAX_WAIT = 30.0
MAX_KEY = 200  # characters of an id in a path

IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
IDENT = re.compile(IDENT_PATTERN)
MONEY_PATTERN = r"^((0|[1-9][0-9]{0,5})(\.[0-9]{1,2})?|1000000(\.00?)?)$"
#: A domain of non-empty labels (no ``a@b..c``), and a local part without what a mail header
#: reads as a separator, a comment or a display name (``a,b@x``, ``x<y>@x``, ``v:a@x``).
EMAIL_PATTERN = r"^[^@\s,;:<>()\[\]\"\\]+@[^@\s.,;:<>()\[\]\"\\]+(\.[^@\s.,;:<>()\[\]\"\\]+)+$"
STATUSES = ("pending", "reserved", "paid", "confirmed", "shipped", "delivered", "rejected", "cancelled")

_ASCII_INT = re.compile(r"[0-9]{1,10}")
#: A number of seconds as a client library writes a float: ``5``, ``2.5``, ``0.30000000000000004``,
#: ``1.192092896e-07`` (probe 25: the exponent form, valid for the documented ``number``, was a 422).
_ASCII_NUMBER = re.compile(r"-?[0-9]{1,6}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")  # "-0" is 0; "-1" below 0


class Model(BaseModel):
    """Strict types (no ``"2"`` for 2, no float for a string); an unknown field is a 422.

    A misspelt field must not be dropped silently: ``{"id": [...]}`` for a redrive would re-inject
    every dead letter, ``"curency"`` would charge in the default currency.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _money(value: str) -> str:
    try:
        cents = parse_money(value)
    except MoneyError as exc:
        raise PydanticCustomError("money", str(exc)) from None
    if cents > MAX_PRICE_CENTS:
        raise PydanticCustomError("money", "must be at most 1000000.00")
    return value


#: ISO 4217 currencies whose minor unit is 0 (no cents): their prices are whole amounts.
#: (Three-decimal currencies, BHD or KWD, are priced to two decimals: a subset of their amounts.)
NO_MINOR_UNIT = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)


def _currency(value: str) -> str:
    """An ISO 4217 currency in circulation (pycountry's copy of the standard: it follows its amendments)."""
    if not payable(value):
        raise PydanticCustomError("currency", "must be an ISO 4217 currency code, e.g. USD or EUR")
    return value


def invisible(char: str) -> bool:
    """A control, format (bidi override, zero-width), surrogate, private or unassigned character (shown escaped)."""
    return unicodedata.category(char).startswith("C")


#: What a text field refuses, as the inside of one regular-expression class: the C0 and C1
#: controls, every format character of the Basic Multilingual Plane (bidi overrides and
#: isolates, zero-width spaces and joiners, the soft hyphen, the byte-order mark, ...) and the
#: line and paragraph separators. They would reach log lines, e-mail headers and terminals as
#: they are. The OpenAPI document's patterns carry the same class, so what it offers is what
#: is accepted. (Format characters beyond that plane, e.g. the tags of a subdivision flag
#: emoji, and private-use or not yet assigned code points do nothing of the kind: accepted.)
REFUSED_CHARS = (
    r"\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    r"\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
)
#: ... and lone surrogates, which only a caller inside the process can pass (JSON text cannot
#: carry one: its escape is a 400), so the document does not name them.
_REFUSED = re.compile(f"[{REFUSED_CHARS}\ud800-\udfff]")
#: The whitespace a text is trimmed of: Unicode's White_Space (what ``\s`` means to the
#: document's readers, Python's and ECMAScript's regular expressions alike) ...
_SPACES = (
    "\t\n\u000b\u000c\r \u0085\u00a0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
#: ... and the same characters as the inside of a regular-expression class, for the patterns.
SPACES = "".join(f"\\u{ord(c):04x}" for c in _SPACES)
#: Text as the document describes it: any whitespace around it (trimmed), and inside no refused
#: character and not only whitespace.
TEXT_PATTERN = rf"^[{SPACES}]*[^{SPACES}{REFUSED_CHARS}]([^{REFUSED_CHARS}]*[^{SPACES}{REFUSED_CHARS}])?[{SPACES}]*$"


def _visible(value: str) -> str:
    """No character of :data:`REFUSED_CHARS`."""
    if _REFUSED.search(value):
        raise ValueError("must not contain control or formatting characters")
    return value


def _text(value: str) -> str:
    """Without its surrounding whitespace (a tab or a newline too): visible and not blank."""
    stripped = _visible(value.strip(_SPACES))
    if not stripped:
        raise PydanticCustomError("blank", "must not be blank")
    return stripped


@dataclass(frozen=True)
class Documented:
    """Sets ``pattern`` in the JSON schema of the annotated string: what its validators check,
    which a ``Field(pattern=...)`` cannot say (a pydantic pattern error would quote the whole
    class to the client). A callable is asked each time the document is built."""

    pattern: str | Callable[[], str]

    def __get_pydantic_json_schema__(self, core: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core)
        schema["pattern"] = self.pattern() if callable(self.pattern) else self.pattern
        return schema


def _whole(value: Any) -> Any:
    """A JSON number without a fractional part is an integer, as JSON Schema's ``integer`` says: ``3.0`` is 3."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer field: ``3`` or ``3.0``, never ``"3"``, ``3.5`` or ``true``.
Whole = BeforeValidator(_whole)


Ident = Annotated[str, Field(pattern=IDENT_PATTERN, description="1-128 ASCII letters, digits or ._:-")]

# The pattern before the validator: after it, pydantic leaves it out of the JSON schema (the OpenAPI document).
Email = Annotated[
    str,
    Field(pattern=EMAIL_PATTERN, max_length=254),
    Documented(EMAIL_PATTERN.replace(r"[^@\s", rf"[^@\s{REFUSED_CHARS}")),
    AfterValidator(_visible),
]
Name = Annotated[str, Field(min_length=1, max_length=200), Documented(TEXT_PATTERN), AfterValidator(_text)]
Money = Annotated[
    str,
    Field(
        pattern=MONEY_PATTERN,
        max_length=10,
        description='A decimal string of ASCII digits, at most 2 decimals, "0" to "1000000.00"',
        examples=["12.50"],
    ),
    AfterValidator(_money),
]
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY), Whole]


def _payable_currencies(schema: dict[str, Any]) -> None:
    """The document lists the codes ``_currency`` accepts (``^[A-Z]{3}$`` alone took ``XXX``)."""
    schema["enum"] = sorted(payable_codes())


Currency = Annotated[
    str,
    Field(
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 currency code in circulation",
        examples=["USD"],
        json_schema_extra=_payable_currencies,
    ),
    AfterValidator(_currency),
]
Status = Literal["pending", "reserved", "paid", "confirmed", "shipped", "delivered", "rejected", "cancelled"]


# --- requests ---------------------------------------------------------------------------


class OrderLine(Model):
    """One line of an order."""

    product_id: Ident
    quantity: Quantity
    price: Money


def _expiry_this_month() -> str:
    today = datetime.now(UTC)
    return expiry_pattern(today.year, today.month)


class CardPayment(Model):
    """The card; the number is exchanged for a token at the edge and goes no further."""

    card_number: str = Field(
        pattern=r"^[1-9]([ -]{0,3}[0-9]){11,18}$",
        repr=False,
        description="12-19 ASCII digits, the first not 0 (up to three spaces or dashes between two of them, "
        "as people type them), Luhn-valid",
        examples=["4242424242424242"],
    )
    expiry: Annotated[
        str,
        Field(
            pattern=r"^(0[1-9]|1[0-2])/[0-9]{2}$", description="MM/YY, not in the past (the pattern: as of this month)"
        ),
        Documented(_expiry_this_month),
    ]
    cvv: str = Field(pattern=r"^[0-9]{3,4}$", repr=False)
    method: Literal["card"] = "card"

    @field_validator("card_number")
    @classmethod
    def _luhn(cls, value: str) -> str:
        number = normalize_number(value)
        if not luhn_valid(number) or number.startswith("0"):  # no card network issues numbers starting with 0
            raise PydanticCustomError("card_number", "is not a valid card number")
        return number

    @field_validator("expiry")
    @classmethod
    def _not_expired(cls, value: str, info: ValidationInfo) -> str:
        today = (info.context or {}).get("today") or datetime.now(UTC)
        if not expiry_valid(value, today.year, today.month):
            raise PydanticCustomError("expiry", "must be MM/YY and not in the past")
        return value


class PlaceOrder(Model):
    """``POST /orders``."""

    user_id: Ident
    user_email: Email  # required (SPEC's body); a directory email, when known, is where the confirmation goes
    currency: Currency = DEFAULT_CURRENCY
    items: list[OrderLine] = Field(
        min_length=1,
        max_length=MAX_ITEMS,
        description=f"1 to {MAX_ITEMS} lines. Lines of one product must name the same price and hold at most "
        f"{MAX_QUANTITY} units together; the order's total is at most 1000000000.00; in a currency without minor "
        "unit (JPY, KRW, ...) prices are whole amounts. Otherwise a 422 naming the line.",
    )
    payment: CardPayment

    @model_validator(mode="after")
    def _lines_agree(self) -> PlaceOrder:
        seen: dict[str, tuple[str, int]] = {}
        total = 0
        for i, line in enumerate(self.items):
            cents = parse_money(line.price)
            if self.currency in NO_MINOR_UNIT and cents % 100:
                raise _at(("items", i, "price"), f"{self.currency} has no minor unit: a whole amount")
            total += cents * line.quantity
            if line.product_id in seen:
                price, qty = seen[line.product_id]
                if parse_money(price) != cents:
                    raise _at(("items", i, "price"), "differs from an earlier line of the same product")
                if qty + line.quantity > MAX_QUANTITY:
                    raise _at(("items", i, "quantity"), f"lines of one product add up to over {MAX_QUANTITY}")
                seen[line.product_id] = (price, qty + line.quantity)
            else:
                seen[line.product_id] = (line.price, line.quantity)
        if total > MAX_TOTAL_CENTS:
            raise _at(("items",), "the order's total is over 1000000000.00")
        return self


class LocatedError(ValueError):
    """A cross-field problem that names the field it is about."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


def _at(loc: tuple[str | int, ...], message: str) -> LocatedError:
    return LocatedError(loc, message)


ShortText = Annotated[str, Field(min_length=1, max_length=100), Documented(TEXT_PATTERN), AfterValidator(_text)]


class NoBody(Model):
    """A command that takes no fields (``deliver``): no body, or ``{}``."""


class CancelOrder(Model):
    """``POST /orders/{id}/cancel``: no body, ``{}``, or the customer's words for why."""

    reason: ShortText | None = Field(
        default=None, description="the customer's words, kept on the order.cancel command as its note"
    )


class ShipOrder(Model):
    """``POST /orders/{id}/ship``."""

    carrier: ShortText
    tracking_number: ShortText


class SetStock(Model):
    """``PUT /inventory/{id}``."""

    on_hand: Annotated[int, Field(ge=0, le=MAX_STOCK), Whole]


class Restock(Model):
    """``POST /inventory/{id}/restock``."""

    quantity: Annotated[int, Field(ge=1, le=MAX_STOCK), Whole]


class CreateUser(Model):
    """``POST /users`` (``user_id`` optional: a new one is made)."""

    email: Email
    user_id: Ident | None = None
    name: Name | None = None


class CreateUserAtOwner(Model):
    """The owner's half of ``POST /users`` (internal)."""

    email: Email
    name: Name | None = None


class UpdateUser(Model):
    """``PATCH /users/{id}``: email and/or name."""

    # The document says what ``_something`` checks: at least one of them, not null.
    model_config = ConfigDict(
        **Model.model_config,
        json_schema_extra={
            "anyOf": [
                {"required": ["email"], "properties": {"email": {"type": "string"}}},
                {"required": ["name"], "properties": {"name": {"type": "string"}}},
            ]
        },
    )

    email: Email | None = None
    name: Name | None = None
    user_id: Ident | None = Field(
        default=None, exclude=True, description="ignored (the path names the user); a read-modify-write may send it"
    )

    @model_validator(mode="after")
    def _something(self) -> UpdateUser:
        if self.email is None and self.name is None:
            raise _at((), "nothing to update: give email and/or name")
        return self


class Redrive(Model):
    """``POST /dlq/redrive``: ``{}`` for all, or some ids, or one source topic."""

    # Documented without null: left out is every letter; null is refused below.
    ids: Annotated[
        list[Annotated[str, Field(max_length=64)]] | None,
        WithJsonSchema({"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": MAX_LIMIT}),
    ] = Field(default=None, max_length=MAX_LIMIT)
    source_topic: Annotated[str | None, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 249})] = Field(
        default=None, min_length=1, max_length=249
    )

    @field_validator("ids", "source_topic", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Left out, a selector selects nothing out; sent as null (a typed client's unset field) it
        # was taken as left out and redrove every dead letter (probe 25).
        if value is None:
            raise PydanticCustomError("not_null", "must be left out, not null, to redrive every dead letter")
        return value


# --- queries (strings on the wire: ASCII digits only, bounded) ---------------------------


def _ascii_int(value: Any) -> Any:
    if isinstance(value, str):
        if not _ASCII_INT.fullmatch(value):
            raise PydanticCustomError("ascii_int", "must be a whole number of ASCII digits")
        return int(value)
    return value


def _finite_seconds(value: Any) -> Any:
    if isinstance(value, str):
        if not _ASCII_NUMBER.fullmatch(value):
            raise PydanticCustomError("seconds", "must be a number of seconds such as 5 or 2.5")
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("seconds", "must be a finite number")
    return value


Limit = Annotated[int, annotated_types.Interval(ge=1, le=MAX_LIMIT), BeforeValidator(_ascii_int)]
Cursor = Annotated[str, Field(max_length=256)]


class Query(BaseModel):
    """Query parameters: strings converted here; an unknown parameter is a 422 (a typo is not silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderQuery(Query):
    """``GET /orders/{id}``."""

    wait: Annotated[float | None, BeforeValidator(_finite_seconds)] = Field(
        default=None,
        ge=0,
        le=MAX_WAIT,
        allow_inf_nan=False,
        description="seconds to long-poll until final, 0 to 30",
    )
    # The document offers RFC 3339's date-time (what a generator of examples can make); the edge
    # takes the other ISO-8601 forms SPEC allows too (a date, a time without an offset: UTC).
    as_of: str | None = Field(
        default=None,
        max_length=64,
        description="an ISO-8601 instant, e.g. 2026-12-05T07:30:00Z; a date alone or a date-time without an "
        "offset is taken too (UTC)",
        json_schema_extra={"format": "date-time"},
    )

    @field_validator("as_of")
    @classmethod
    def _instant(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_ts(value)
            except ValueError:
                raise PydanticCustomError("instant", "must be an ISO-8601 instant") from None
        return value


class ListOrders(Query):
    """``GET /orders``."""

    status: Status | None = None
    user_id: Ident | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


class ListStock(Query):
    """``GET /inventory``."""

    limit: Limit = 50
    cursor: Cursor | None = None


class ListDeadLetters(Query):
    """``GET /dlq``."""

    limit: Limit = 50
    cursor: Cursor | None = None
    source_topic: str | None = Field(default=None, max_length=249)
    status: Literal["dead", "redriven"] | None = None


# --- responses ---------------------------------------------------------------------------


class Open(BaseModel):
    """A response: the named fields are promised, more may come."""

    model_config = ConfigDict(extra="allow")


class Error(Open):
    """Every error answer."""

    error: str
    message: str
    details: list[Any]


class Placed(Open):
    order_id: str
    status: Literal["pending"]


class ViewLine(Open):
    product_id: str
    quantity: int
    price: str


class PaymentView(Open):
    status: str
    last4: str | None = None
    payment_id: str | None = None
    token: str | None = Field(default=None, description="the admin's view only")


class OrderView(Open):
    order_id: str
    user_id: str
    status: Status
    items: list[ViewLine]
    total: str
    currency: str
    created_at: str
    updated_at: str
    reason: str | None = None
    payment: PaymentView | None = None
    user_email: str | None = Field(default=None, description="the admin's view only")


class Envelope(Open):
    """SPEC §3's envelope: every message on every topic travels in one."""

    id: str
    type: str
    entity_type: str
    entity_id: str
    timestamp: str
    version: int
    correlation_id: str
    causation_id: str | None
    payload: dict[str, Any]
    metadata: dict[str, Any]


class OrderEvents(Open):
    order_id: str
    events: list[Envelope]


class OrderPage(Open):
    orders: list[OrderView]
    next_cursor: str | None


class CommandAccepted(Open):
    order_id: str
    status: Status
    accepted: Literal["cancel", "ship", "deliver"]


class StockView(Open):
    product_id: str
    on_hand: int
    reserved: int
    sold: int
    available: int


class StockPage(Open):
    products: list[StockView]
    next_cursor: str | None


class StockAccepted(Open):
    product_id: str
    status: Literal["accepted"]


class UserView(Open):
    user_id: str
    email: str | None = None
    name: str | None = None


class Revenue(Open):
    total: str = Field(description="Revenue of confirmed (and later) orders in `currency`")
    currency: str
    by_currency: dict[str, str] = Field(
        default_factory=dict, description="Revenue per currency, each apart (orders in other currencies too)"
    )


class AnalyticsSummary(Open):
    orders_by_status: dict[str, int]
    revenue: Revenue
    revenue_per_minute: list[dict[str, Any]]
    top_products: list[dict[str, Any]]


class DeadLetterPage(Open):
    messages: list[dict[str, Any]]
    next_cursor: str | None


class Redriven(Open):
    redriven: int
    ids: list[str]


class Health(Open):
    status: str
