"""Notifications: one confirmation per confirmed order, never two.

Consumes the notifications topic (key: user id, co-partitioned with the users
topic so the customer's profile is local): ``notification.send``. Delivers through
the configured :class:`~app.notifier.Notifier` (retried a bounded number of times;
then the command is dead-lettered and can be redriven), records the delivery in
``order_to_notification`` and emits ``notification.sent`` to the orders topic.
"""

from __future__ import annotations

from typing import Any

from faust.types import EventT, StreamT

from agents._wiring import dead_letter_sender, send
from app import metrics
from app.domain.common import NOTIFICATIONS, ORDERS, Emit
from app.main import app, settings
from app.notifier import build
from app.processing import Out, PermanentError, Stage, envelopes, run
from app.topics import notifications_topic
from schemas.envelope import Envelope
from tables import notification_records, order_to_notification, user_to_profile

STAGE = Stage("notifications", NOTIFICATIONS, attempts=settings.notify_max_attempts, backoff=0.2)
notifier = build(settings.notifier, settings.smtp_url, settings.smtp_sender)


async def handle(env: Envelope, event: EventT) -> list[Out] | None:
    """Send the confirmation unless this order already has one."""
    if env["type"] != "notification.send":
        raise PermanentError(f"notifications does not handle {env['type']!r}")
    p = env["payload"]
    order_id = str(p["order_id"])
    if order_to_notification.get(order_id) is not None:
        return None
    profile = user_to_profile.get(str(p.get("user_id"))) or {}
    to = profile.get("email") or p.get("email")
    subject = f"Your order {order_id} is confirmed"
    body = f"Thank you! Order {order_id} for {p.get('total')} {p.get('currency')} is confirmed."
    try:
        await notifier.send(env["id"], to, subject, body, p)
    except Exception:
        metrics.NOTIFICATIONS.labels(notifier.name, "failed").inc()
        raise
    metrics.NOTIFICATIONS.labels(notifier.name, "sent").inc()
    sent = {"order_id": order_id, "to": to, "channel": notifier.name, "message_id": env["id"], "subject": subject}
    order_to_notification[order_id] = {**sent, "at": env["timestamp"]}
    return envelopes([Emit(ORDERS, order_id, "notification.sent", "notification", order_id, sent)], env)


@app.agent(notifications_topic)
async def send_confirmation(stream: StreamT[Any]) -> None:
    """Run the notifications stage over the notifications topic."""
    await run(STAGE, stream, handle, store=notification_records, send=send, send_dead_letter=dead_letter_sender(STAGE))
