"""The crash test at CI size in both guarantee modes (``make crash-test`` runs the full size).

Marked ``slow`` and kept out of ``make test``: it still fails intermittently (README, Known gaps).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.crash import run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORDERS = int(os.environ.get("CRASH_ORDERS", "300"))
RATE = float(os.environ.get("CRASH_RATE", "30"))


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_sigkill_chaos_keeps_every_guarantee(kafka_bootstrap: str, tmp_path: Path, guarantee: str) -> None:
    report = run(kafka_bootstrap, orders=ORDERS, rate=RATE, guarantee=guarantee, kills=3, workdir=tmp_path)
    print(report.as_dict())
    assert report.kills == 3
    assert report.wiped == 1
    assert report.orders == ORDERS
    assert sum(report.outcomes.values()) == ORDERS
    assert report.outcomes.get("confirmed", 0) > 0
    assert report.outcomes.get("rejected", 0) > 0
    assert report.violations == []
