"""Notifications: one confirmation per confirmed order, never two.

Consumes ``order.confirmed`` from the orders topic (key: order id; and the older
``notification.send`` command from the notifications topic). Delivers through the
configured :class:`~app.notifier.Notifier` to the customer's directory email when known
(:mod:`agents.users` keeps a replica of the directory), else the order's email, with a
bounded number of attempts — then the input is dead-lettered and can be redriven. Records
the delivery (:func:`tables.put_notified`) and emits ``notification.sent`` to the orders topic.
"""

from __future__ import annotations

import asyncio

from agents import users
from agents._wiring import envelopes, on_partition, order_id_of, send
from app import metrics
from app.domain.common import NOTIFICATIONS, ORDERS, Emit
from app.engine.runtime import EffectFailed
from app.engine.step import Step
from app.main import engine, settings
from app.notifier import LogNotifier, build
from schemas.envelope import Envelope, make
from tables import notified, put_notified

STAGE = "notifications"


class Undelivered(Exception):
    """The notifier kept failing; ``attempts`` says how often it was tried."""

    def __init__(self, attempts: int, error: Exception) -> None:
        super().__init__(f"{error} (after {attempts} attempt(s))")
        self.attempts = attempts


BACKOFF = 0.2
notifier = build(settings.notifier, settings.smtp_url, settings.smtp_sender)


async def handle(step: Step, env: Envelope) -> None:
    """Send the confirmation unless this order already has one (or one is on its way).

    The log notifier writes its line in the step. Any other (SMTP) delivers in the background,
    off the partition's critical path, as the payment gateway is called: the input's offset is
    held until the delivery comes back (a crash reads it again), and one that keeps failing
    dead-letters its input. Awaited in the step, a server that accepted connections and never
    answered held every order of the partition for 15 s a confirmation (probe 25).
    """
    p = env["payload"]
    # The older notification.send command was keyed by its user: only order.confirmed is checked.
    order_id = order_id_of(env) if env["type"] == "notification.send" else on_partition(step, order_id_of(env))
    busy = f"notify/{order_id}"
    if notified(step, order_id) or busy in step.inflight:
        return
    user_id = str(p.get("user_id") or "")
    to = users.email_of(user_id) or p.get("user_email") or p.get("email")
    subject = f"Your order {order_id} is confirmed"
    body = f"Thank you! Order {order_id} for {p.get('total')} {p.get('currency')} is confirmed."
    if isinstance(notifier, LogNotifier):
        await _attempts(env, to, subject, body)  # writes a log line: never waits
        _record(step, env, order_id, to, subject)
        return

    async def deliver() -> Envelope:
        try:
            await _attempts(env, to, subject, body)
        except Undelivered as exc:
            raise EffectFailed(exc) from exc  # dead-letters the input; a redrive tries again
        delivered = {"order_id": order_id, "to": to, "subject": subject, "cause": env}
        return make("notification.delivered", "notification", order_id, delivered, correlation_id=order_id)

    step.start("notify", deliver, key=busy)


async def _attempts(env: Envelope, to: str | None, subject: str, body: str) -> None:
    """Deliver, trying up to ``notify_max_attempts`` times; :class:`Undelivered` after the last."""
    for attempt in range(1, settings.notify_max_attempts + 1):
        try:
            await notifier.send(env["id"], to, subject, body, env["payload"])
            metrics.NOTIFICATIONS.labels(notifier.name, "sent").inc()
            return
        except Exception as exc:
            metrics.NOTIFICATIONS.labels(notifier.name, "failed").inc()
            if attempt == settings.notify_max_attempts:
                raise Undelivered(attempt, exc) from exc
            await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))


def handle_delivered(step: Step, result: Envelope) -> None:
    """A background delivery came back (a local input): record it and emit ``notification.sent``."""
    p = result["payload"]
    order_id = str(p["order_id"])
    if not notified(step, order_id):
        _record(step, p["cause"], order_id, p.get("to"), str(p["subject"]))


def _record(step: Step, env: Envelope, order_id: str, to: str | None, subject: str) -> None:
    sent = {"order_id": order_id, "to": to, "channel": notifier.name, "message_id": env["id"], "subject": subject}
    outs = envelopes([Emit(ORDERS, order_id, "notification.sent", "notification", order_id, sent)], env, stage=STAGE)
    # The delivery's details are the event's payload: the record keeps the (packed) event once.
    put_notified(step, order_id, env["timestamp"], outs[0][2])
    send(step, outs)


engine.route(STAGE, ORDERS, {"order.confirmed"}, handle)
engine.route(STAGE, NOTIFICATIONS, {"notification.send"}, handle)
# Local only (a background delivery's result): no message of this type is read from Kafka.
engine.route(STAGE, ORDERS, {"notification.delivered"}, handle_delivered)
engine.route(STAGE, NOTIFICATIONS, {"notification.delivered"}, handle_delivered)
