"""Notifiers: how an order confirmation reaches the customer.

``log`` records and logs the message; ``smtp`` delivers it with aiosmtplib. The
event id is the message's idempotency key (``Message-ID``), so a redelivery can be
recognised by the receiving side.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import urlparse

log = logging.getLogger("orderstream.notifier")


class NotifierError(Exception):
    """The notification could not be delivered (this attempt)."""


class Notifier(Protocol):
    """Sends one notification."""

    name: str

    async def send(self, message_id: str, to: str | None, subject: str, body: str, data: dict[str, Any]) -> None:
        """Deliver or raise :class:`NotifierError`."""
        ...


class LogNotifier:
    """Record the notification in the log; always succeeds."""

    name = "log"

    async def send(self, message_id: str, to: str | None, subject: str, body: str, data: dict[str, Any]) -> None:
        """Log the notification."""
        log.info("notification %s to=%s subject=%r order=%s", message_id, to, subject, data.get("order_id"))


class SmtpNotifier:
    """Deliver by SMTP to ``smtp_url`` (``smtp://host:port``)."""

    name = "smtp"

    def __init__(self, url: str, sender: str, timeout: float = 5.0) -> None:
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 25
        self.sender = sender
        self.timeout = timeout

    async def send(self, message_id: str, to: str | None, subject: str, body: str, data: dict[str, Any]) -> None:
        """Send one email; connection problems become :class:`NotifierError`."""
        import aiosmtplib

        if not to:
            raise NotifierError("no email address known for this customer")
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{message_id}@orderstream>"
        msg.set_content(body)
        try:
            await aiosmtplib.send(msg, hostname=self.host, port=self.port, timeout=self.timeout)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise NotifierError(f"smtp delivery to {self.host}:{self.port} failed: {exc}") from exc


def build(kind: str, smtp_url: str, sender: str) -> Notifier:
    """Return the configured notifier."""
    if kind == "smtp":
        return SmtpNotifier(smtp_url, sender)
    return LogNotifier()
