"""The README's run command brings up a worker on its printed URL; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scripts import kafka_local
from tests.support import ROOT, eventually, http, order_body

pytestmark = [pytest.mark.integration]


def _processes_under(path: str) -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if path in cmd and state != "Z":
            out.append(f"{entry.name}: {cmd[:120]}")
    return out


class Run:
    """``scripts/run.py`` as ``make run`` starts it: its printed lines and its URL."""

    def __init__(self, data_dir: Path, app_id: str) -> None:
        kafka_port, web_port = kafka_local.free_port(2), kafka_local.free_port()
        env = {k: v for k, v in os.environ.items() if k != "ORDERSTREAM_BROKER"}
        env["ORDERSTREAM_APP_ID"] = app_id
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "scripts/run.py", "--port", str(kafka_port), "--web-port", str(web_port)),
                "--data-dir",
                str(data_dir),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        self.url: str = eventually(
            lambda: next((m.group(1) for line in self.lines if (m := re.search(r"Open (http://\S+?)/? ", line))), None),
            150,
            0.25,
            what="the run command to print its URL",
        )

    def stop(self) -> None:
        """Ctrl-C, and wait until nothing runs under the data directory."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=90)
        eventually(lambda: not _processes_under(str(self.data_dir)), 30, 0.25, what="no process left behind")

    def orders(self) -> list[str]:
        resp = eventually(lambda: (r := http("GET", self.url + "/orders?limit=500")).status == 200 and r, 60)
        assert resp
        return sorted(o["order_id"] for o in resp.body["orders"])


def test_a_second_run_shows_the_first_run_s_orders_and_after_clean_none(tmp_path: Path) -> None:
    if kafka_local.docker_available():
        pytest.skip("with Docker the run command uses compose; this test covers the local-broker path")
    data_dir = tmp_path / "run-data"
    app_id = f"runs{os.getpid()}"
    first = Run(data_dir, app_id)
    try:
        body = order_body([("widget", 1, "9.99")])
        placed = [http("POST", first.url + "/orders", body).body["order_id"] for _ in range(3)]
        for order_id in placed:
            eventually(
                lambda o=order_id: http("GET", f"{first.url}/orders/{o}?wait=5").body.get("status") == "confirmed", 60
            )
        assert first.orders() == sorted(placed)
        stock = http("GET", first.url + "/inventory/widget").body
    finally:
        first.stop()
    second = Run(data_dir, app_id)
    try:
        assert second.orders() == sorted(placed)  # exactly the first run's orders
        assert http("GET", second.url + "/inventory/widget").body == stock  # demo stock not set again
    finally:
        second.stop()
    shutil.rmtree(data_dir)  # what `make clean` does to `.data/`
    third = Run(data_dir, app_id)
    try:
        assert third.orders() == []
    finally:
        third.stop()


def test_run_serves_the_dashboard_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    if kafka_local.docker_available():
        pytest.skip("with Docker the run command uses compose; this test covers the local-broker path")
    data_dir = tmp_path / "run-data"
    run = Run(data_dir, f"run{os.getpid()}")
    try:
        before_url = next(i for i, line in enumerate(run.lines) if "Open http" in line)
        assert before_url <= 15, "".join(run.lines[: before_url + 1])
        assert http("GET", run.url + "/").status == 200
        assert http("GET", run.url + "/ready").status == 200
        eventually(lambda: http("GET", run.url + "/inventory/widget").body.get("on_hand") == 100, 30, what="demo stock")
        assert _processes_under(str(data_dir)), "expected a broker and a worker running under the data dir"
    finally:
        run.stop()
    assert run.proc.returncode == 0, "".join(run.lines[-30:])
