"""Users: the customer directory.

Consumes the users topic (key: user id): ``user.created`` and ``user.updated`` from
the HTTP edge. Emits nothing. Table: ``user_to_profile``.
"""

from __future__ import annotations

from typing import Any

from faust.types import EventT, StreamT

from agents._wiring import dead_letter_sender, key_of, send
from app.domain import users as domain
from app.domain.common import USERS
from app.main import app
from app.processing import Out, PermanentError, Stage, run
from app.topics import users_topic
from schemas.envelope import Envelope
from tables import user_records, user_to_profile

STAGE = Stage("users", USERS)


async def handle(env: Envelope, event: EventT) -> list[Out] | None:
    """Apply a directory change."""
    user_id = key_of(event) or env["entity_id"]
    try:
        profile = domain.apply(user_to_profile.get(user_id), env)
    except domain.UserError as exc:
        raise PermanentError(str(exc)) from exc
    if profile is not None:
        user_to_profile[user_id] = profile
    return None


@app.agent(users_topic)
async def update_directory(stream: StreamT[Any]) -> None:
    """Run the users stage over the users topic."""
    await run(STAGE, stream, handle, store=user_records, send=send, send_dead_letter=dead_letter_sender(STAGE))
