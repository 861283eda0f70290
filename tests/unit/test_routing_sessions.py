"""Worker-to-worker client sessions: none opens once the worker closed them on its way down."""

from __future__ import annotations

import asyncio

import pytest


def test_no_session_opens_after_the_sessions_were_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request forwarded while the worker stopped opened a new session after ``close``, left
    open at exit ("Unclosed client session" on stderr at every such stop; probe 22)."""
    from app.web import routing

    monkeypatch.setattr(routing, "_sessions", {})
    monkeypatch.setattr(routing, "_stopping", False)

    async def scenario() -> None:
        peer = routing.session("peer")
        assert routing.session("peer") is peer  # one pool, reused
        await routing.close()
        assert peer.closed
        with pytest.raises(routing.Unavailable, match="stopping"):
            routing.session("peer")
        with pytest.raises(routing.Unavailable):
            routing.session("long_poll")

    asyncio.run(scenario())
