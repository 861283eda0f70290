"""The provisioned Grafana dashboard charts every metric family the app exports, as rates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.metrics import REGISTRY

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dashboards" / "orderstream.json"


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_panels(p.get("panels", [])))
    return out


PANELS = _panels(json.loads(DASHBOARD.read_text())["panels"])
EXPRS = [t["expr"] for p in PANELS for t in p.get("targets", [])]
FAMILIES = sorted({(f.name, f.type) for f in REGISTRY.collect()})


def _series(name: str, kind: str) -> str:
    """The series name a query uses for a family: counters by ``_total``, histograms by ``_bucket``."""
    return {"counter": f"{name}_total", "histogram": f"{name}_bucket", "info": f"{name}_info"}.get(kind, name)


@pytest.mark.parametrize(("name", "kind"), FAMILIES, ids=[name for name, _ in FAMILIES])
def test_every_family_is_on_a_panel(name: str, kind: str) -> None:
    series = _series(name, kind)
    assert any(re.search(rf"\b{series}\b", e) for e in EXPRS), f"no panel queries {series}"


@pytest.mark.parametrize(("name", "kind"), [f for f in FAMILIES if f[1] in ("counter", "histogram")])
def test_counters_are_read_as_rates_never_raw(name: str, kind: str) -> None:
    series = _series(name, kind)
    for e in EXPRS:
        for m in re.finditer(rf"\b{series}\b", e):
            before = e[: m.start()]
            assert re.search(r"\b(rate|increase)\(\s*$", before), f"{series} is not under rate()/increase() in {e}"


def test_windows_follow_the_scrape_interval() -> None:
    windows = {w for e in EXPRS for w in re.findall(r"\[([^\]]+)\]", e)}
    assert windows <= {"$__rate_interval", "$__range"}, windows


def test_final_status_counts_survive_restarts() -> None:
    panel = next(p for p in PANELS if p["title"].startswith("Orders by final status"))
    assert "increase(orderstream_order_outcomes_total[$__range])" in panel["targets"][0]["expr"]


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in PANELS]
    assert len(ids) == len(set(ids))
