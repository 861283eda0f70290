"""Local tables never outlive their cluster: a worker serves only state its changelogs hold.

Real brokers and real worker processes. A worker's RocksDB state is kept across a clean
stop only when its checkpoint names this cluster and this changelog and lies within the
changelog's range (``app.engine.recovery``); otherwise it is discarded and rebuilt.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.engine.store import PartitionDB
from scripts import kafka_local
from tests.support import Cluster, Worker, eventually, http, order_body, uid

pytestmark = [pytest.mark.integration]


def _place_confirmed(cluster: Cluster, n: int) -> list[str]:
    product = uid("p")
    cluster.set_stock(product, 100)
    ids = [cluster.place(order_body([(product, 1, "5.00")])) for _ in range(n)]
    for order_id in ids:
        assert cluster.final(order_id)["status"] == "confirmed"
    return ids


def _confirm_then_stop(worker: Worker, n: int) -> list[str]:
    """Start ``worker``, place ``n`` orders it confirms, stop it: their ids."""
    worker.start().wait_ready()
    try:
        return _place_confirmed(Cluster([worker]), n)
    finally:
        worker.stop()


def _summary(worker: Worker) -> dict[str, Any]:
    resp = eventually(lambda: (r := http("GET", worker.url + "/analytics/summary")).status == 200 and r, 60)
    assert resp
    return dict(resp.body)


def _orders(worker: Worker) -> list[dict[str, Any]]:
    resp = eventually(lambda: (r := http("GET", worker.url + "/orders?limit=500")).status == 200 and r, 60)
    assert resp
    return list(resp.body["orders"])


def _assert_empty(worker: Worker, ids: list[str]) -> None:
    assert _orders(worker) == []
    summary = _summary(worker)
    assert summary["orders_by_status"] == {}
    assert summary["revenue"]["total"] == "0.00"
    for order_id in ids:
        assert http("GET", f"{worker.url}/orders/{order_id}").status == 404


def test_a_fresh_cluster_under_an_old_data_directory_serves_an_empty_system(broker_url: str, tmp_path: Path) -> None:
    app_id = uid("ls")
    worker = Worker(app_id=app_id, broker=broker_url, datadir=tmp_path / "w").start().wait_ready()
    try:
        ids = _place_confirmed(Cluster([worker]), 3)
        assert len(_orders(worker)) == 3
    finally:
        worker.stop()
    # A new, empty cluster; the same app id and the same data directory.
    fresh = kafka_local.start(
        port=kafka_local.free_port(2), nodes=1, data_dir=tmp_path / "kafka2", owner_pid=os.getpid()
    )
    try:
        again = Worker(app_id=app_id, broker=f"kafka://{fresh.bootstrap}", datadir=tmp_path / "w").start()
        try:
            again.wait_ready()
            _assert_empty(again, ids)
            assert "written against cluster" in again.log_text()
        finally:
            again.stop()
    finally:
        fresh.stop()


def test_a_recreated_changelog_discards_its_store(broker_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id = uid("ls")
    worker = Worker(app_id=app_id, broker=broker_url, datadir=tmp_path / "w")
    ids = _confirm_then_stop(worker, 3)
    changelog = f"{app_id}-order_records-changelog"
    asyncio.run(_recreate(kafka_bootstrap, changelog))
    worker.start().wait_ready()
    try:
        assert _orders(worker) == []
        assert _summary(worker)["orders_by_status"] == {}
        for order_id in ids:
            assert http("GET", f"{worker.url}/orders/{order_id}").status == 404
        assert "changelog was created again" in worker.log_text()  # its topic id (before: "ahead of its changelog")
    finally:
        worker.stop()
    # The discarded records may be the only copy left (probe 27: wiped, gone): a copy of each
    # database they were in is kept beside it, named in the log line, and holds every order.
    kept = re.findall(r"a copy of the database as it was is kept in (\S+)", worker.log_text())
    assert kept
    found: set[str] = set()
    for path in kept:
        copy = PartitionDB(Path(path), 0)
        try:
            found |= {key.split("/")[1] for key, _ in copy.scan("order_records", "log/")}
        finally:
            copy.close()
    assert set(ids) <= found


def test_a_recreated_changelog_that_grew_past_the_checkpoint_discards_its_store(
    broker_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Offsets start at 0 again in a topic created again under its name: once the new copy grew past
    the old checkpoint, the old state was served (orders of the deleted copy read 200, the new
    copy's 404; probe 18). The topic id tells the copies apart."""
    app_id = uid("ls")
    old = Worker(app_id=app_id, broker=broker_url, datadir=tmp_path / "old")
    gone = _confirm_then_stop(old, 3)
    asyncio.run(_recreate(kafka_bootstrap, f"{app_id}-order_records-changelog"))
    new = Worker(app_id=app_id, broker=broker_url, datadir=tmp_path / "new")
    kept = _confirm_then_stop(new, 24)  # every partition's changelog past its old checkpoint
    old.start().wait_ready()
    try:
        for order_id in gone:
            assert http("GET", f"{old.url}/orders/{order_id}").status == 404
        for order_id in kept:
            assert http("GET", f"{old.url}/orders/{order_id}").body["status"] == "confirmed"
        assert {o["order_id"] for o in _orders(old)} == set(kept)
        assert _summary(old)["orders_by_status"] == {"confirmed": len(kept)}
        assert "changelog was created again" in old.log_text()
    finally:
        old.stop()


def test_a_data_directory_copied_to_another_app_is_not_served(broker_url: str, tmp_path: Path) -> None:
    first = Worker(app_id=uid("ls"), broker=broker_url, datadir=tmp_path / "w1")
    ids = _confirm_then_stop(first, 2)
    shutil.copytree(tmp_path / "w1", tmp_path / "w2")
    other = Worker(app_id=uid("ls"), broker=broker_url, datadir=tmp_path / "w2").start()
    try:
        other.wait_ready()
        _assert_empty(other, ids)
        assert "written from changelog" in other.log_text()
    finally:
        other.stop()


def test_a_clean_restart_keeps_its_state_without_reading_the_changelogs_again(broker_url: str, tmp_path: Path) -> None:
    worker = Worker(app_id=uid("ls"), broker=broker_url, datadir=tmp_path / "w")
    ids = _confirm_then_stop(worker, 3)
    worker.start().wait_ready()
    try:
        assert sorted(o["order_id"] for o in _orders(worker)) == sorted(ids)
        assert worker.log_path is not None
        assert "discarding" not in worker.log_path.read_text()
    finally:
        worker.stop()


async def _recreate(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        partitions = len((await admin.describe_topics([topic]))[0]["partitions"])
        await admin.delete_topics([topic])
        for _ in range(100):
            if topic not in await admin.list_topics():
                break
            await asyncio.sleep(0.1)
        for _ in range(100):
            try:
                await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"})])
                return
            except Exception:  # the deletion may still be in progress
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


def test_records_written_by_hand_on_a_changelog_never_stop_its_restore(
    broker_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """One junk record on a changelog made every restore of its partition raise, in the rebalance
    listener that aiokafka never calls again: the partition was never served, on this worker or on
    any that took it over (probe 21). Such records are skipped, each with a log line."""
    from aiokafka import AIOKafkaProducer

    app_id = uid("ls")
    worker = Worker(app_id=app_id, broker=broker_url, datadir=tmp_path / "w")
    ids = _confirm_then_stop(worker, 3)

    async def junk() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for store, key, value in (
                ("order_records", b"log/junk/1", b"\xff\xfenot json"),
                ("order_records", b"log/junk/2", b"[1, 2, 3]"),  # JSON the order index cannot fold
                ("stock_records", b"\xff\xfe", b"{}"),  # a key that is not text
            ):
                topic = f"{app_id}-{store}-changelog"
                for p in await producer.partitions_for(topic):
                    await producer.send_and_wait(topic, value, key, partition=p)
        finally:
            await producer.stop()

    asyncio.run(junk())
    shutil.rmtree(tmp_path / "w")  # every partition restored from its changelogs
    worker.start().wait_ready(60)
    try:
        for order_id in ids:
            assert http("GET", f"{worker.url}/orders/{order_id}").body["status"] == "confirmed"
        assert _place_confirmed(Cluster([worker]), 1)
        assert worker.log_text().count("a changelog record this app cannot have written is skipped") >= 3
    finally:
        worker.stop()


def test_a_partition_s_database_under_another_partition_s_name_is_discarded(broker_url: str, tmp_path: Path) -> None:
    """Checkpoints did not name their partition: p4's database moved to p7 was trusted whenever its
    offsets lay within p7's changelog, and p7's orders read 404 (probe 22)."""
    worker = Worker(app_id=uid("ls"), broker=broker_url, datadir=tmp_path / "w")
    ids = _confirm_then_stop(worker, 12)
    dbs = sorted(tmp_path.glob("w/**/p*.rocksdb"))
    assert len(dbs) >= 2, dbs
    first, second = dbs[0], dbs[1]
    aside = first.with_name("swap")
    first.rename(aside)
    second.rename(first)
    aside.rename(second)
    worker.start().wait_ready()
    try:
        for order_id in ids:
            assert http("GET", f"{worker.url}/orders/{order_id}").body["status"] == "confirmed"
        assert _summary(worker)["orders_by_status"] == {"confirmed": len(ids)}
        assert "of its changelog, not" in worker.log_text()
    finally:
        worker.stop()
