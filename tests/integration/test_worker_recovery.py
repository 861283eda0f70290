"""A real worker keeps its state across SIGKILL: from RocksDB, and from the changelog alone."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from tests.support import Cluster, Worker, eventually, http, order_body, uid

pytestmark = [pytest.mark.integration]


def _snapshot(url: str, product: str, order_id: str) -> tuple[dict, dict]:
    """Read stock and order, retrying while the worker answers 503 (partition still moving to it)."""

    def read() -> tuple[dict, dict] | None:
        stock = http("GET", f"{url}/inventory/{product}")
        order = http("GET", f"{url}/orders/{order_id}")
        if 503 in (stock.status, order.status):
            assert stock.headers.get("Retry-After") or order.headers.get("Retry-After")
            return None
        return stock.body, order.body

    return eventually(read, 60, 0.25, what="owner answers")


def _confirmed_order(broker_url: str, tmp_path: Path) -> tuple[Worker, Cluster, str, str, tuple[dict, dict]]:
    worker = Worker(app_id=uid("rec"), broker=broker_url, datadir=tmp_path / "w0").start().wait_ready()
    cluster = Cluster([worker])
    product = uid("p")
    cluster.set_stock(product, 9)
    order_id = cluster.place(order_body([(product, 2, "4.50")]))
    assert cluster.final(order_id)["status"] == "confirmed"
    eventually(lambda: cluster.get(f"/inventory/{product}").body["sold"] == 2, 20, what="committed")
    before = _snapshot(worker.url, product, order_id)
    assert before[0] == {"product_id": product, "on_hand": 7, "reserved": 0, "sold": 2, "available": 7}
    return worker, cluster, product, order_id, before


def _recovered(worker: Worker, product: str, order_id: str, before: tuple[dict, dict]) -> None:
    """The state comes back as it was before the kill.

    A SIGKILL can land before the last effects' changelog records and offsets are
    committed (they were visible locally, not yet durable); the restarted worker then
    handles those inputs again, so the state converges to what it was rather than
    being there at the first read.
    """
    eventually(
        lambda: _snapshot(worker.url, product, order_id) == before, 30, 0.25, what="the state as before the kill"
    )


def test_state_survives_sigkill(broker_url: str, tmp_path: Path) -> None:
    worker, cluster, product, order_id, before = _confirmed_order(broker_url, tmp_path)
    try:
        worker.kill(signal.SIGKILL)
        worker.start().wait_ready()
        _recovered(worker, product, order_id, before)
    finally:
        cluster.stop()


def test_state_survives_sigkill_and_a_wiped_data_directory(broker_url: str, tmp_path: Path) -> None:
    worker, cluster, product, order_id, before = _confirmed_order(broker_url, tmp_path)
    try:
        worker.kill(signal.SIGKILL)
        worker.start().wait_ready()
        _recovered(worker, product, order_id, before)
        worker.kill(signal.SIGKILL)
        shutil.rmtree(worker.datadir)
        worker.start().wait_ready()
        _recovered(worker, product, order_id, before)  # from the changelog alone
    finally:
        cluster.stop()


def test_a_worker_told_to_stop_while_the_broker_is_down_exits_within_its_stop_timeout(tmp_path: Path) -> None:
    """With the broker unreachable a SIGTERM'd worker waited for ever (its commit, its producers'
    flush, the group's goodbye) and only SIGKILL ended it (probe 22). It now exits within
    ``stop_timeout``, as a SIGKILL would end it: the next owner reads what it did not commit."""
    import os
    import time

    from scripts import kafka_local as kl

    data = tmp_path / "kafka"
    cluster = kl.start(port=kl.free_port(2), nodes=1, data_dir=data, owner_pid=os.getpid())
    worker = Worker(
        app_id=uid("st"),
        broker=f"kafka://{cluster.bootstrap}",
        datadir=tmp_path / "w",
        env={"ORDERSTREAM_STOP_TIMEOUT": "5"},
    )
    try:
        worker.start().wait_ready()
        product = uid("p")
        Cluster([worker]).set_stock(product, 5)
    finally:
        cluster.stop()
    assert worker.proc is not None  # the broker's JVM has exited: the worker's every request to it fails
    began = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    try:
        code = worker.proc.wait(timeout=60)
    finally:
        worker.kill()  # never left behind
    took = time.monotonic() - began
    assert took < 20, f"took {took:.0f} s to exit"
    assert code in (0, 1), worker.log_tail()
    if code == 1:
        assert "did not stop within 5 s (stop_timeout)" in worker.log_text()
