"""``faust -A app dlq list|show|redrive`` on a real broker and worker: listed, redriven once, exit codes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support import ROOT, Cluster, eventually, http, uid

pytestmark = [pytest.mark.e2e]

TOKEN = "dlq-cli-t0ken"


def produce_garbage(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Produce raw (non-JSON) messages with aiokafka."""
    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for value in values:
                await producer.send_and_wait(topic, value, key=uid("k").encode())
        finally:
            await producer.stop()

    asyncio.run(go())


def dlq(cluster: Cluster, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSTREAM_")}
    cmd = [sys.executable, "-m", "faust", "-A", "app", "dlq", *args, "--url", cluster.urls[0]]
    if token is not None:
        cmd += ["--token", token]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def letters(cluster: Cluster, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    resp = http("GET", f"{cluster.urls[0]}/dlq?limit=500&{qs}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200, resp
    return list(resp.body["messages"])


def test_dlq_cli_lists_shows_and_redrives_once(make_cluster: Any, kafka_bootstrap: str) -> None:
    cluster = make_cluster(1, env={"ORDERSTREAM_ADMIN_TOKEN": TOKEN})
    app_id = cluster.workers[0].app_id
    marker = uid("garbage-")
    produce_garbage(kafka_bootstrap, f"{app_id}.orders", [f"{marker} a".encode(), f"{marker} b".encode()])
    found = eventually(lambda: len(ls := letters(cluster)) == 2 and ls, 90, 0.5, what="two dead letters")
    ids = sorted(m["id"] for m in found)

    listed = dlq(cluster, "list", "--source-topic", "orders")
    assert listed.returncode == 0, listed.stderr
    assert all(i in listed.stdout for i in ids)

    paged = dlq(cluster, "list", "--limit", "1")
    assert paged.returncode == 0 and ids[0] in paged.stdout and ids[1] not in paged.stdout
    assert f"--cursor {ids[0]}" in paged.stdout
    assert ids[1] in dlq(cluster, "list", "--limit", "1", "--all").stdout

    assert dlq(cluster, "list", "--status", "redriven").returncode == 1
    assert dlq(cluster, "list", "--source-topic", "payments").returncode == 1

    shown = dlq(cluster, "show", ids[0])
    assert shown.returncode == 0 and f'"id": "{ids[0]}"' in shown.stdout and marker in shown.stdout
    assert dlq(cluster, "show", "no-such-letter").returncode == 1

    redriven = dlq(cluster, "redrive", "--id", ids[0])
    assert redriven.returncode == 0, redriven.stderr
    assert "redriven 1 of 1" in redriven.stdout
    assert "redrive" in redriven.stderr  # the progress bar

    eventually(
        lambda: {m["id"]: m["status"] for m in letters(cluster)}.get(ids[0]) == "redriven",
        60,
        0.5,
        what="the letter marked redriven",
    )
    # Once: redriving it again matches nothing; the other letter is still dead.
    again = dlq(cluster, "redrive", "--id", ids[0])
    assert again.returncode == 1 and "not redriven" in again.stderr
    assert {m["id"]: m["status"] for m in letters(cluster)}[ids[1]] == "dead"
    # The redriven original is still not JSON: it is dead-lettered again, as a new letter, once.
    eventually(lambda: len(letters(cluster)) == 3, 60, 0.5, what="the redriven original dead-lettered again")
    assert len(letters(cluster, status="dead")) == 2

    # Usage and reachability are exit 2; a wrong token too.
    assert dlq(cluster, "redrive").returncode == 2
    assert dlq(cluster, "frobnicate").returncode == 2
    wrong = dlq(cluster, "redrive", "--id", ids[1], token="wrong")
    assert wrong.returncode == 2 and "refused the admin token" in wrong.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "dlq", "list", "--url", "http://127.0.0.1:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unreachable.returncode == 2 and "cannot reach the worker" in unreachable.stderr

    # --source-topic redrives what is dead there, with a bar, exit 0.
    by_topic = dlq(cluster, "redrive", "--source-topic", "orders", "--no-progress")
    assert by_topic.returncode == 0 and "redriven 2 of 2" in by_topic.stdout
