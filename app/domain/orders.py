"""The order saga as pure functions: ``(state, event) -> (state, emits)``.

The same :func:`decide` drives the live agent and the ``as_of`` replay, so live
state and rebuilt state cannot drift. Time comes only from event timestamps.

Inputs (all keyed by order id, on the orders topic): ``order.placed``, the per-line
``inventory.reserved`` / ``inventory.rejected`` results, ``payment.processed`` /
``payment.failed``, the per-line ``inventory.committed`` / ``inventory.released``, and
the commands ``order.cancel`` / ``order.ship`` / ``order.deliver`` (a cancel with reason
``payment_timeout`` or ``pending_timeout`` comes from the saga's own deadline timer).

Statuses: ``pending`` (lines being reserved; deadline ``pending_timeout``) → ``reserved``
(charging; deadline ``payment_timeout``) → ``paid`` (``order.paid``, committing the
lines) → ``confirmed`` once every line's commit landed (``order.confirmed``) →
``shipped`` → ``delivered``; or ``rejected`` (stock short, or still pending at its
deadline) / ``cancelled`` (payment failed, customer, payment timeout).

An order that ends holding reserved lines gives them back first (SPEC: ``payment.failed ─►
inventory.released ─► order.cancelled``): it keeps its status, with ``closing`` naming the
end, until every line's ``inventory.released`` is in; then ``order.cancelled`` /
``order.rejected`` goes out, caused by the input that decided the end. So an order reads
cancelled only once its stock is back. A release that never answers (dead-lettered) ends
the order anyway at ``pending_timeout`` after the end was decided (``release_timeout``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from app.domain.common import (
    DEFAULT_CURRENCY,
    FINAL_STATUSES,
    INVENTORY,
    ORDERS,
    PAYMENTS,
    Emit,
    check_lines,
    from_cents,
    payable,
)
from schemas.envelope import Envelope, derived_id, make, parse_ts

#: Namespace of the order ids that ``POST /orders`` derives from a user's ``Idempotency-Key``.
IDEMPOTENCY_NS = uuid.UUID("0b7f4f7c-1c1e-4c0e-8a4b-3b8f5f0f9a11")


def keyed_order_id(user_id: str, idempotency_key: str) -> str:
    """The order id of ``idempotency_key`` from ``user_id``: the same key names the same order."""
    return str(uuid.uuid5(IDEMPOTENCY_NS, f"{user_id}\n{idempotency_key}"))


#: The reason of the timer's ``order.cancel`` for an order whose releases did not all answer in time.
RELEASE_TIMEOUT = "release_timeout"

#: What :func:`deadline_cancel` is told about an order waiting for its releases (the deadline index's value).
CLOSING = "closing"


def deadline_status(state: dict[str, Any]) -> str:
    """What an order's deadline is listed under and the timer acts on: its status, or
    :data:`CLOSING` when it waits for its releases."""
    return CLOSING if state.get("closing") else str(state.get("status"))


def deadline_cancel(order_id: str, status: str, timestamp: str | None = None, cause: str | None = None) -> Envelope:
    """The saga's own ``order.cancel`` for an order past its deadline in ``status``.

    ``reserved`` past ``payment_timeout`` is a ``payment_timeout``; an order :data:`CLOSING`
    (waiting for its releases) a :data:`RELEASE_TIMEOUT`; anything else (still ``pending``)
    a ``pending_timeout``. Its id is derived, so a timer firing twice cancels once. ``cause``:
    the last input the order took (what it waited on since), its ``causation_id``.
    """
    reason = {"reserved": "payment_timeout", CLOSING: RELEASE_TIMEOUT}.get(status, "pending_timeout")
    return make(
        "order.cancel",
        "order",
        order_id,
        {"order_id": order_id, "reason": reason},
        correlation_id=order_id,
        causation_id=cause,
        event_id=derived_id(f"{reason}/{order_id}", 0),
        timestamp=timestamp,
    )


OrderState = dict[str, Any]

CANCELLABLE = frozenset({"pending", "reserved"})


@dataclass
class Decision:
    """The new state (``None`` when unchanged) and what to send."""

    state: OrderState | None
    emits: list[Emit] = field(default_factory=list)


def _event(order: OrderState, type_: str, **payload: Any) -> Emit:
    return Emit(
        ORDERS, order["order_id"], type_, "order", order["order_id"], {"order_id": order["order_id"], **payload}
    )


def admit(env: Envelope) -> None:
    """Refuse (raise) a live ``order.placed`` past the HTTP edge's bounds or in no currency in circulation.

    One written on the topic by hand went through no model. Checked on what arrives, never
    on a stored history (``as_of`` and the rebuild fold those with :func:`decide` alone: an
    order placed before the rule, or in a currency ISO 4217 has since withdrawn, must still
    read back).
    """
    if env["type"] != "order.placed":
        return
    try:
        check_lines(env["payload"].get("items") or [])
    except ValueError as exc:
        raise ValueError(f"order.placed {exc}") from None
    if not payable(env["payload"].get("currency", DEFAULT_CURRENCY)):
        raise ValueError("order.placed names no ISO 4217 currency in circulation")


def asked_for(state: OrderState, env: Envelope) -> bool:
    """Whether a payment answer is for the payment this order asked for (the saga names it then),
    of the order's total in its currency.

    One that is not is left alone, never refunded: refunding its charge would give back
    someone else's money. Not refused either: under at least once, an answer can be read
    again before the input that asked for it is (after a failed commit), and is sent again.
    """
    p = env["payload"]
    asked = state["payment"].get("payment_id")
    if asked is None or p.get("payment_id") != asked:
        return False
    # Of the amount asked for too: a charge written on the payments topic by hand before the
    # saga's (the payment id is the order's) would otherwise pay the order with a cent.
    amount, currency = p.get("amount_cents"), p.get("currency")
    return (amount is None or amount == state["total_cents"]) and (currency is None or currency == state["currency"])


def _line_command(order: OrderState, type_: str, product_id: str, quantity: int) -> Emit:
    payload = {"order_id": order["order_id"], "product_id": product_id, "quantity": quantity}
    return Emit(INVENTORY, product_id, type_, "product", product_id, payload)


def _quantities(order: OrderState) -> dict[str, int]:
    return {item["product_id"]: int(item["quantity"]) for item in order["items"]}


def _release(order: OrderState, lines: list[str]) -> list[Emit]:
    qty = _quantities(order)
    emits = []
    for pid in lines:
        order["lines"][pid] = "releasing"
        emits.append(_line_command(order, "inventory.release", pid, qty[pid]))
    return emits


def _reserved_lines(order: OrderState) -> list[str]:
    return [pid for pid, st in order["lines"].items() if st == "reserved"]


def closing(state: OrderState) -> dict[str, Any] | None:
    """The end an order is giving its lines back for (``status``, ``reason``, ``details``, ``cause``), or ``None``.

    An order already final is not ending, whatever it holds (a history written by an older
    saga that ended it at once).
    """
    if state["status"] in FINAL_STATUSES:
        return None
    return state.get("closing")  # type: ignore[no-any-return]


def _end(
    order: OrderState,
    env: Envelope,
    status: str,
    reason: str,
    release_timeout: float,
    now: float | None,
    details: list[dict[str, Any]] | None = None,
    unanswered: list[Emit] | None = None,
) -> list[Emit]:
    """End the order as ``status``: release its reserved lines, and end it once they are back.

    With nothing to give back it ends now; otherwise it waits (``closing``) for each line's
    ``inventory.released``, at most ``release_timeout`` seconds. ``unanswered``: releases of
    lines that never answered, sent before the end but not waited for.
    """
    releases = _release(order, _reserved_lines(order))
    # Lines still waiting for their reservation's answer are waited for as well (an answer
    # ``reserved`` is given back, then released) unless they are released unanswered.
    awaited = unanswered is None and "pending" in order["lines"].values()
    order["closing"] = {"status": status, "reason": reason, "details": details, "cause": env["id"]}
    if awaited:
        order["closing"]["awaits_answers"] = True
    if releases or awaited:
        order["deadline"] = _deadline(env, release_timeout, now)
        return releases + (unanswered or [])
    return [*(unanswered or []), _finish(order, env)]


def _held(order: OrderState) -> bool:
    """Whether an ending order still waits for a line: a release, or (when it awaits them) a reservation's answer."""
    waiting = ("releasing", "pending") if order["closing"].get("awaits_answers") else ("releasing",)
    return any(st in waiting for st in order["lines"].values())


def _finish(order: OrderState, env: Envelope) -> Emit:
    """The order's end, once nothing it reserved is still being released (or the wait timed out)."""
    ending = order["closing"]
    order["closing"] = None
    order["deadline"] = None
    _touch(order, env, ending["status"])
    order["reason"] = ending["reason"]
    if ending["status"] == "rejected":
        order["details"] = ending["details"]
        emit = _event(order, "order.rejected", reason=ending["reason"], details=ending["details"])
    else:
        emit = _event(order, "order.cancelled", reason=ending["reason"])
    return replace(emit, cause=ending["cause"] if ending["cause"] != env["id"] else None)


def _copy(state: OrderState) -> OrderState:
    out = dict(state)
    out["lines"] = dict(state["lines"])
    if state.get("payment") is not None:
        out["payment"] = dict(state["payment"])
    if state.get("shortages") is not None:
        out["shortages"] = dict(state["shortages"])  # line_answered adds to it; never touch the input
    return out


def _touch(order: OrderState, env: Envelope, status: str | None = None) -> None:
    order["updated_at"] = env["timestamp"]
    if status is not None:
        order["status"] = status


def _deadline(env: Envelope, timeout: float, now: float | None) -> float:
    """``timeout`` seconds after the event, or after ``now`` if it is handled later (a backlog, an old message)."""
    return max(parse_ts(env["timestamp"]).timestamp(), now or 0.0) + timeout


def place(env: Envelope, pending_timeout: float = 30.0, now: float | None = None) -> Decision:
    """Create the order from ``order.placed`` and ask every line's product partition to reserve."""
    p = env["payload"]
    items: list[dict[str, Any]] = [
        {"product_id": str(i["product_id"]), "quantity": int(i["quantity"]), "price_cents": int(i["price_cents"])}
        for i in p["items"]
    ]
    if not items or any(i["quantity"] <= 0 or i["price_cents"] < 0 for i in items):
        raise ValueError("order.placed needs at least one line with positive quantity and non-negative price")
    if len({i["product_id"] for i in items}) != len(items):
        raise ValueError("order.placed lists a product twice")
    payment = p.get("payment") or {}
    order: OrderState = {
        "order_id": p["order_id"],
        "user_id": str(p["user_id"]),
        "user_email": p.get("user_email"),
        "status": "pending",
        "items": items,
        "total_cents": sum(i["price_cents"] * i["quantity"] for i in items),
        "currency": p.get("currency", DEFAULT_CURRENCY),
        "created_at": env["timestamp"],
        "updated_at": env["timestamp"],
        "reason": None,
        "details": None,
        "payment": {
            "status": "pending",
            "last4": payment.get("last4"),
            "payment_id": None,
            "token": payment.get("token"),
        },
        "lines": {i["product_id"]: "pending" for i in items},
        "deadline": _deadline(env, pending_timeout, now),
        "shipment": None,
    }
    request_hash = (env.get("metadata") or {}).get("request_hash")
    if request_hash:
        order["request_hash"] = request_hash
    emits = [_line_command(order, "inventory.reserve", i["product_id"], i["quantity"]) for i in items]
    return Decision(order, emits)


def _all_answered(order: OrderState) -> bool:
    return all(st != "pending" for st in order["lines"].values())


def _gather(
    order: OrderState, env: Envelope, payment_timeout: float, now: float | None = None, release_timeout: float = 30.0
) -> list[Emit]:
    """Once every line answered: go on to payment, or release what was reserved and reject."""
    if not _all_answered(order):
        return []
    rejected = [pid for pid, st in order["lines"].items() if st == "rejected"]
    if rejected:
        details = [{"product_id": pid, **order.get("shortages", {}).get(pid, {})} for pid in sorted(rejected)]
        order["payment"]["status"] = "not_charged"
        return _end(order, env, "rejected", "out_of_stock", release_timeout, now, details)
    order["status"] = "reserved"
    order["deadline"] = _deadline(env, payment_timeout, now)
    payment_id = f"pay_{order['order_id']}"
    order["payment"]["payment_id"] = payment_id
    order["payment"]["status"] = "charging"
    charge = {
        "order_id": order["order_id"],
        "payment_id": payment_id,
        "token": order["payment"]["token"],
        "last4": order["payment"]["last4"],
        "amount_cents": order["total_cents"],
        "currency": order["currency"],
    }
    return [Emit(PAYMENTS, order["order_id"], "payment.charge", "payment", payment_id, charge)]


def line_answered(
    state: OrderState, env: Envelope, payment_timeout: float, now: float | None = None, release_timeout: float = 30.0
) -> Decision:
    """Record one line's reservation result and gather."""
    order = _copy(state)
    p = env["payload"]
    pid = str(p["product_id"])
    if order["lines"].get(pid) != "pending":
        return Decision(None)  # a late duplicate; the line already has its answer
    _touch(order, env)
    ended = order["status"] != "pending" or closing(order) is not None
    if env["type"] == "inventory.reserved":
        if ended:
            # Cancelled while this line was in flight: give it straight back (an order still
            # closing waits for this release too).
            order["lines"][pid] = "reserved"
            return Decision(order, _release(order, [pid]))
        order["lines"][pid] = "reserved"
    else:
        order["lines"][pid] = "rejected"
        order.setdefault("shortages", {})[pid] = {
            "requested": p.get("requested"),
            "available": p.get("available"),
        }
        if ended:
            if closing(order) is not None and not _held(order):
                return Decision(order, [_finish(order, env)])  # the last line it waited for: nothing to give back
            return Decision(order)
    return Decision(order, _gather(order, env, payment_timeout, now, release_timeout))


def payment_answered(
    state: OrderState, env: Envelope, release_timeout: float = 30.0, now: float | None = None
) -> Decision:
    """Confirm on ``payment.processed``; cancel and release on ``payment.failed``."""
    p = env["payload"]
    ending = closing(state)
    if state["status"] != "reserved" or ending is not None:
        if env["type"] == "payment.processed" and state["payment"]["status"] not in ("charged", "refunded"):
            # Paid after the order was cancelled (timeout or customer): refund it.
            order = _copy(state)
            _touch(order, env)
            order["payment"].update(status="refunded", charge_id=p.get("charge_id"))
            refund = {**p, "reason": "order_" + (ending["status"] if ending else state["status"])}
            return Decision(
                order, [Emit(PAYMENTS, order["order_id"], "payment.refund", "payment", p["payment_id"], refund)]
            )
        pay = state["payment"]
        if env["type"] == "payment.failed" and pay["status"] in ("charging", "cancelled") and "answer" not in pay:
            # Failed after the order ended or began ending (the gateway timed out past the
            # payment timeout): nothing to undo, but the event is the order's: kept in its history, once.
            order = _copy(state)
            order["payment"]["answer"] = str(p.get("reason") or "payment_failed")
            return Decision(order)
        return Decision(None)
    order = _copy(state)
    order["deadline"] = None
    if env["type"] == "payment.processed":
        _touch(order, env, "paid")
        order["payment"].update(status="charged", payment_id=p["payment_id"], charge_id=p.get("charge_id"))
        emits = [
            _event(
                order,
                "order.paid",
                payment_id=p["payment_id"],
                amount=from_cents(order["total_cents"]),
                currency=order["currency"],
            )
        ]
        qty = _quantities(order)
        for pid in order["lines"]:
            order["lines"][pid] = "committing"
            emits.append(_line_command(order, "inventory.commit", pid, qty[pid]))
        return Decision(order, emits)
    reason = str(p.get("reason") or "payment_failed")
    _touch(order, env)
    order["payment"].update(status="failed", payment_id=p.get("payment_id"))
    return Decision(order, _end(order, env, "cancelled", reason, release_timeout, now))


def can_cancel(state: OrderState) -> bool:
    """Whether a customer may still cancel (an order already ending as cancelled is accepted again)."""
    ending = closing(state)
    return state["status"] in CANCELLABLE and (ending is None or ending["status"] == "cancelled")


def can_ship(state: OrderState) -> bool:
    """Whether the order may be shipped."""
    return state["status"] == "confirmed"


def can_deliver(state: OrderState) -> bool:
    """Whether the order may be marked delivered."""
    return state["status"] == "shipped"


def cancel(state: OrderState, env: Envelope, release_timeout: float = 30.0, now: float | None = None) -> Decision:
    """Cancel while pending or reserved, releasing what is reserved; otherwise nothing."""
    reason = str(env["payload"].get("reason") or "customer_cancelled")
    if closing(state) is not None:
        # A release never answered: end it anyway. Only the timer's release timeout does, or
        # another timer's command once the wait's own deadline passed too (a timer reading a
        # deadline index older than the end fires early, and is ignored).
        timer = reason in (RELEASE_TIMEOUT, "payment_timeout", "pending_timeout")
        late = state.get("deadline") is not None and parse_ts(env["timestamp"]).timestamp() >= state["deadline"]
        if reason == RELEASE_TIMEOUT or (timer and late):
            order = _copy(state)
            return Decision(order, [_finish(order, env)])
        return Decision(None)  # already ending
    if reason == RELEASE_TIMEOUT:
        return Decision(None)
    if reason == "pending_timeout":
        return expire(state, env, release_timeout, now)
    if not can_cancel(state):
        return Decision(None)
    if reason == "payment_timeout" and state["status"] != "reserved":
        return Decision(None)
    order = _copy(state)
    _touch(order, env)
    if order["payment"]["status"] in ("pending", "charging"):
        order["payment"]["status"] = "cancelled"
    return Decision(order, _end(order, env, "cancelled", reason, release_timeout, now))


def ship(state: OrderState, env: Envelope) -> Decision:
    """Mark a confirmed order shipped."""
    if not can_ship(state):
        return Decision(None)
    order = _copy(state)
    _touch(order, env, "shipped")
    p = env["payload"]
    order["shipment"] = {"carrier": p.get("carrier"), "tracking_number": p.get("tracking_number")}
    return Decision(order, [_event(order, "order.shipped", **order["shipment"])])


def deliver(state: OrderState, env: Envelope) -> Decision:
    """Mark a shipped order delivered."""
    if not can_deliver(state):
        return Decision(None)
    order = _copy(state)
    _touch(order, env, "delivered")
    return Decision(order, [_event(order, "order.delivered")])


def line_settled(state: OrderState, env: Envelope) -> Decision:
    """Note a released line, or a committed one: the last commit of a paid order confirms it,
    the last release of an ending order ends it."""
    pid = str(env["payload"].get("product_id"))
    settled = "released" if env["type"] == "inventory.released" else "committed"
    if state["lines"].get(pid) in (None, settled):
        return Decision(None)  # unknown line, or a duplicate
    order = _copy(state)
    order["lines"][pid] = settled
    if settled == "committed" and order["status"] == "paid" and all(s == "committed" for s in order["lines"].values()):
        _touch(order, env, "confirmed")
        return Decision(order, [confirmed(order, env)])
    if closing(order) is not None and not _held(order):
        return Decision(order, [_finish(order, env)])
    return Decision(order)


def confirmed(order: OrderState, env: Envelope) -> Emit:
    """``order.confirmed``: everything notifications and analytics need, in one event."""
    return _event(
        order,
        "order.confirmed",
        user_id=order["user_id"],
        user_email=order.get("user_email"),
        total=from_cents(order["total_cents"]),
        total_cents=order["total_cents"],
        currency=order["currency"],
        items=order["items"],
        confirmed_at=env["timestamp"],
    )


def expire(state: OrderState, env: Envelope, release_timeout: float = 30.0, now: float | None = None) -> Decision:
    """The saga's deadline passed: reject a still-pending order, releasing what it reserved."""
    if state["status"] != "pending":
        return Decision(None)
    order = _copy(state)
    _touch(order, env)
    order["payment"]["status"] = "not_charged"
    # A line still pending past the deadline may be reserved with its answer lost (or its
    # command dead-lettered): release it too, without waiting for it. It stays pending, so an
    # answer arriving later still gives the line straight back; releasing a line never
    # reserved does nothing.
    qty = _quantities(order)
    pending = [pid for pid, st in order["lines"].items() if st == "pending"]
    unanswered = [_line_command(order, "inventory.release", pid, qty[pid]) for pid in pending]
    return Decision(order, _end(order, env, "rejected", "reservation_timeout", release_timeout, now, [], unanswered))


def decide(
    state: OrderState | None,
    env: Envelope,
    payment_timeout: float,
    pending_timeout: float | None = None,
    now: float | None = None,
) -> Decision:
    """Route one input of the saga to its transition.

    ``now`` (the handling time) only pushes deadlines later for an input handled long after
    it was sent; replays without it (``as_of``) give the same states otherwise.
    """
    type_ = env["type"]
    # The pending deadline also bounds an ending order's wait for its releases.
    pending_timeout = payment_timeout if pending_timeout is None else pending_timeout
    if type_ == "order.placed":
        if state is not None:
            return Decision(None)
        return place(env, pending_timeout, now)
    if state is None:
        # A result for an order this partition never saw placed: nothing to apply it to.
        return Decision(None)
    if type_ in ("inventory.reserved", "inventory.rejected"):
        return line_answered(state, env, payment_timeout, now, pending_timeout)
    if type_ in ("payment.processed", "payment.failed"):
        return payment_answered(state, env, pending_timeout, now)
    if type_ == "order.cancel":
        return cancel(state, env, pending_timeout, now)
    if type_ == "order.ship":
        return ship(state, env)
    if type_ == "order.deliver":
        return deliver(state, env)
    if type_ in ("inventory.released", "inventory.committed"):
        return line_settled(state, env)
    if type_ in ("order.cancelled", "order.rejected") and closing(state) is not None:
        # Only a replay meets the saga's own end (the live saga never takes it as input): a
        # history written by an older saga ends the order in the entry that decided it.
        order = _copy(state)
        _finish(order, env)
        return Decision(order)
    return Decision(None)


def fold(events: list[Envelope], payment_timeout: float, pending_timeout: float | None = None) -> OrderState | None:
    """Rebuild an order from its history with the live transitions."""
    state: OrderState | None = None
    for env in events:
        decision = decide(state, env, payment_timeout, pending_timeout)
        if decision.state is not None:
            state = decision.state
    return state


def is_final(state: OrderState) -> bool:
    """Whether the order reached a terminal or fulfilment state."""
    return state["status"] in FINAL_STATUSES


def to_view(state: OrderState, *, private: bool = False) -> dict[str, Any]:
    """Render the read model as the API returns it (money as decimal strings).

    ``private``: the admin's view, with the order's email and payment token; a customer's has neither.
    """
    view: dict[str, Any] = {
        "order_id": state["order_id"],
        "user_id": state["user_id"],
        "status": state["status"],
        "items": [
            {"product_id": i["product_id"], "quantity": i["quantity"], "price": from_cents(i["price_cents"])}
            for i in state["items"]
        ],
        "total": from_cents(state["total_cents"]),
        "currency": state["currency"],
        "created_at": state["created_at"],
        "updated_at": state["updated_at"],
    }
    if state.get("reason"):
        view["reason"] = state["reason"]
    if state.get("details"):
        view["details"] = state["details"]
    pay = state.get("payment")
    if pay and (pay.get("last4") or pay.get("payment_id")):
        view["payment"] = {"status": pay["status"], "last4": pay.get("last4"), "payment_id": pay.get("payment_id")}
        if private:
            view["payment"]["token"] = pay.get("token")
    if state.get("shipment"):
        view["shipment"] = state["shipment"]
    if private:
        view["user_email"] = state.get("user_email")
    return view


def customer_view(view: dict[str, Any]) -> dict[str, Any]:
    """An admin's order view (:func:`to_view` ``private``) as a customer sees it: no email, no token."""
    out = {k: v for k, v in view.items() if k != "user_email"}
    if isinstance(out.get("payment"), dict):
        out["payment"] = {k: v for k, v in out["payment"].items() if k != "token"}
    return out
