"""The customer directory as pure functions."""

from __future__ import annotations

from typing import Any

from schemas.envelope import Envelope

Profile = dict[str, Any]
FIELDS = ("email", "name")


class UserError(ValueError):
    """A directory change that cannot apply."""


def apply(profile: Profile | None, env: Envelope) -> Profile | None:
    """Create or update a profile; ``None`` when nothing changes."""
    p = env["payload"]
    if env["type"] == "user.created":
        if profile is not None:
            return None
        return {
            "user_id": env["entity_id"],
            **{f: p.get(f) for f in FIELDS},
            "created_at": env["timestamp"],
            "updated_at": env["timestamp"],
        }
    if env["type"] == "user.updated":
        if profile is None:
            raise UserError(f"user {env['entity_id']} does not exist")
        changes = {f: p[f] for f in FIELDS if f in p}
        return {**profile, **changes, "updated_at": env["timestamp"]}
    raise UserError(f"users does not handle {env['type']!r}")
