"""Users: the customer directory, and a replica of everyone's email on every worker.

Consumes the users topic (key: user id): ``user.created`` and ``user.updated`` from the
HTTP edge. Emits nothing. Table: ``user_records`` (``user/<user>``). Confirmations go to
the directory's email when known, but an order's partition is usually not its user's,
so every worker keeps the emails of all users in memory, tailing the user_records
changelog (:func:`email_of`).
"""

from __future__ import annotations

from typing import Any

from agents._wiring import on_partition
from app.domain import users as domain
from app.domain.common import USERS
from app.engine.step import Step
from app.main import engine
from schemas.envelope import Envelope
from tables import USERS as STORE

STAGE = "users"
_emails: dict[str, str] = {}


def handle(step: Step, env: Envelope) -> None:
    """Apply a directory change (a ``UserError`` dead-letters it)."""
    user_id = on_partition(step, env["entity_id"])
    profile = domain.apply(step.get(STORE, f"user/{user_id}"), env)
    if profile is not None:
        step.put(STORE, f"user/{user_id}", profile)
        if profile.get("email"):
            _emails[user_id] = profile["email"]


def email_of(user_id: str) -> str | None:
    """The directory's email for ``user_id`` as this worker knows it."""
    return _emails.get(user_id)


def _replicate(key: str, value: Any) -> None:
    if key.startswith("user/") and isinstance(value, dict) and value.get("email"):
        _emails[key[len("user/") :]] = value["email"]


engine.route(STAGE, USERS, {"user.created", "user.updated"}, handle)
engine.replicate(STORE, _replicate)
