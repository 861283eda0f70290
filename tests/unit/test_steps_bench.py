"""The handler-path bench moves every order through every stage (none of its messages dead-lettered)."""

from __future__ import annotations

import asyncio
import shutil

import pytest


def test_every_order_goes_through_every_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.bench import steps
    from app.main import engine

    # The bench puts every key on one partition: give the shared engine its own back afterwards.
    monkeypatch.setattr(engine, "partitions", engine.partitions)
    monkeypatch.setattr(engine, "_partitions_by_key", {})

    figures = asyncio.run(steps.run(20, 500))
    shutil.rmtree(figures["workdir"], ignore_errors=True)
    assert figures["records"] == 20 * 11 + 2  # 11 records per one-line order, and the stock commands
