"""The customer directory's pure decisions."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain import users
from schemas.envelope import Envelope, make


def user_event(type_: str, second: int = 0, **payload: Any) -> Envelope:
    return make(type_, "user", "u-1", payload, correlation_id="u-1", timestamp=f"2024-05-01T12:00:{second:02d}.000Z")


def created() -> users.Profile:
    profile = users.apply(None, user_event("user.created", email="ada@example.com", name="Ada"))
    assert profile is not None
    return profile


def test_created_makes_a_profile() -> None:
    assert created() == {
        "user_id": "u-1",
        "email": "ada@example.com",
        "name": "Ada",
        "created_at": "2024-05-01T12:00:00.000Z",
        "updated_at": "2024-05-01T12:00:00.000Z",
    }


def test_created_without_a_name_leaves_it_empty() -> None:
    profile = users.apply(None, user_event("user.created", email="ada@example.com"))

    assert profile is not None
    assert profile["name"] is None


def test_created_again_changes_nothing() -> None:
    assert users.apply(created(), user_event("user.created", 1, email="other@example.com")) is None


def test_updated_changes_only_the_given_fields() -> None:
    profile = users.apply(created(), user_event("user.updated", 5, name="Ada L."))

    assert profile == {**created(), "name": "Ada L.", "updated_at": "2024-05-01T12:00:05.000Z"}


def test_updated_ignores_fields_the_directory_does_not_keep() -> None:
    profile = users.apply(created(), user_event("user.updated", 5, email="ada@new.example", role="admin"))

    assert profile is not None
    assert profile["email"] == "ada@new.example"
    assert "role" not in profile


def test_updating_an_unknown_user_is_an_error() -> None:
    with pytest.raises(users.UserError, match="does not exist"):
        users.apply(None, user_event("user.updated", name="Ghost"))


def test_other_message_types_are_an_error() -> None:
    with pytest.raises(users.UserError):
        users.apply(created(), user_event("order.placed"))
