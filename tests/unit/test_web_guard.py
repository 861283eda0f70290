"""The edge's guard: caps answer 503 beyond them, tokens compare safely, customer views hide secrets."""

from __future__ import annotations

import dataclasses

import pytest

from app.web import guard


def test_a_gauge_refuses_beyond_its_cap_and_frees_its_slots() -> None:
    gauge = guard.Gauge("waiters", 2)
    with gauge.hold(), gauge.hold():
        with pytest.raises(guard.Refused) as info, gauge.hold():
            pass
        assert info.value.status == 503
        assert gauge.value == 2
    assert gauge.value == 0
    with gauge.hold():
        assert gauge.value == 1


def test_a_header_that_is_not_utf8_is_simply_not_equal() -> None:
    assert not guard._same("Bearer \udcff\udcfe", "Bearer s3cret")
    assert not guard._same(None, "x")
    assert guard._same("Bearer s3cret", "Bearer s3cret")


def test_the_internal_token_is_stable_and_the_request_hash_keyed() -> None:
    assert guard.internal_token() == guard.internal_token()
    doc = {"user_id": "u1", "items": [{"product_id": "p", "quantity": 1, "price_cents": 100}], "card_number": "4242"}
    assert guard.request_hash(doc) == guard.request_hash(dict(reversed(doc.items())))
    assert guard.request_hash(doc) != guard.request_hash({**doc, "card_number": "4243"})
    assert "4242" not in guard.request_hash(doc)


def test_with_no_admin_token_the_internal_token_needs_the_kafka_cluster_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # The app id shows in /metrics: app id and an empty admin token alone must not make the token.
    monkeypatch.setattr(guard, "settings", dataclasses.replace(guard.settings, internal_token=""))
    monkeypatch.setattr(guard.engine, "cluster_id", "cluster-a")
    a = guard.internal_token()
    monkeypatch.setattr(guard.engine, "cluster_id", "cluster-b")
    assert guard.internal_token() != a
    # The setting, from faust.ini, the environment or its flag (read from the environment only
    # before probe 17: the flag and the ini key were ignored).
    monkeypatch.setattr(guard, "settings", dataclasses.replace(guard.settings, internal_token="given"))
    assert guard.internal_token() == "given"


def test_customer_views_of_events_carry_no_token_and_no_email() -> None:
    from app.web.api import _customer_view

    env = {
        "type": "order.placed",
        "metadata": {"request_hash": "h"},
        "payload": {
            "user_email": "a@example.com",
            "payment": {"method": "card", "token": "tok_ok_1", "last4": "4242"},
            "notification": {"to": "a@example.com", "email": "a@example.com", "subject": "Thanks"},
        },
    }
    view = _customer_view(env)
    assert "tok_" not in repr(view) and "@" not in repr(view)
    assert view["payload"]["payment"] == {"method": "card", "last4": "4242"}
    assert env["payload"]["payment"]["token"] == "tok_ok_1"  # the stored envelope is untouched


@pytest.mark.parametrize(
    ("headers", "admin"),
    [
        ([("Authorization", "Bearer s3cret")], True),
        ([("Authorization", "bearer s3cret")], True),  # the scheme is case-insensitive (RFC 9110)
        ([("Authorization", "BEARER s3cret")], True),
        ([("Authorization", "Bearer S3CRET")], False),  # the token is not
        ([("Authorization", "Bearer s3cret"), ("Authorization", "Bearer wrong")], False),  # which one counts?
        ([("Authorization", "Bearer wrong"), ("Authorization", "Bearer s3cret")], False),
        ([("Authorization", "Basic s3cret")], False),
        ([("Authorization", "Bearers3cret")], False),
        ([], False),
    ],
)
def test_the_admin_bearer(monkeypatch: pytest.MonkeyPatch, headers: list[tuple[str, str]], admin: bool) -> None:
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    monkeypatch.setattr(guard, "settings", dataclasses.replace(guard.settings, admin_token="s3cret"))
    request = make_mocked_request("POST", "/dlq/redrive", headers=CIMultiDict(headers))
    assert guard.is_admin(request) is admin
