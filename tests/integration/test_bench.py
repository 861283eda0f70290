"""``python -m app.bench`` at tiny size against the session's broker: the report has sane figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.bench.stats import check_run
from tests.support import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_bench_reports_orderstream_and_the_ceiling(kafka_bootstrap: str, tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    cmd = [
        sys.executable,
        "-m",
        "app.bench",
        "--broker",
        f"kafka://{kafka_bootstrap}",
        "--orders",
        "150",
        "--ceiling-orders",
        "150",
        "--warmup",
        "10",
        "--guarantees",
        "at_least_once",
        "--workers",
        "1",
        "--partitions",
        "4",
        "--drain-timeout",
        "60",
        "--workdir",
        str(tmp_path / "work"),
        "--output",
        str(out),
        "--plot",
        str(png),
        "--no-progress",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert png.stat().st_size > 10_000
    assert not (tmp_path / "work").exists()  # removed unless --keep
    runs = {r["engine"]: r for r in report["runs"]}
    assert set(runs) == {"ceiling", "orderstream"}
    for run in runs.values():
        assert check_run(run) == [], run
        assert run["completed"] == run["sent"] == 150
        assert run["outcomes"] == {"confirmed": 150}
        assert run["latency_ms"]["p50"] > 0
        assert run["cpu"]["worker_ms_per_order"] > 0
        per = run["produced"]["per_confirmed_order"]
        assert per["events_records"] >= 7 and per["changelog_records"] >= 1
        assert per["total_bytes"] > 1000
    # The ceiling's hop pattern is exact: order.placed plus 6 events, and 6 changelog records.
    ceiling = runs["ceiling"]["produced"]["per_confirmed_order"]
    assert (ceiling["events_records"], ceiling["changelog_records"]) == (7.0, 6.0)
    orderstream = runs["orderstream"]
    assert orderstream["vs_ceiling"]["completed_per_s"] > 0
    assert f"{orderstream['app_id']}.orders" in orderstream["produced"]["per_topic"]
    assert orderstream["rss_mb"]["orderstream0"] > 10
    assert "× ceiling" in done.stdout
    assert report["broker"]["started_by_bench"] is False
    app = orderstream["app_id"]
    # Where the time went: every hop of the 150 orders, from the topics the run left behind.
    hops = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.bench.hops",
            "--broker",
            f"kafka://{kafka_bootstrap}",
            "--app-id",
            app,
            "--min-count",
            "150",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert hops.returncode == 0, hops.stdout + hops.stderr[-3000:]
    assert "order.placed -> inventory.reserve" in hops.stdout
    assert "inventory.committed -> order.confirmed" in hops.stdout
