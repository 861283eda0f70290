"""Shared fixtures: one real Kafka broker per test session, and worker clusters.

The broker comes from, in order: ``ORDERSTREAM_TEST_BROKER`` (an already running
broker, e.g. the one ``make test`` starts), testcontainers' Kafka module when a
Docker engine answers, or the local KRaft broker from the official Apache Kafka
jars (``scripts/kafka_local.py``). Never a fake.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts import kafka_local
from tests.support import Cluster, Worker, uid


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real broker for the session, as ``host:port``."""
    given = os.environ.get("ORDERSTREAM_TEST_BROKER")
    if given:
        yield given.split("://", 1)[-1]
        return
    if kafka_local.docker_available():
        # testcontainers' KafkaContainer expects Confluent images; the official image is
        # configured through its KRaft environment variables instead.
        from testcontainers.core.container import DockerContainer

        port = kafka_local.free_port()
        container = DockerContainer(kafka_local.DOCKER_IMAGE).with_bind_ports(port, port)
        for key, value in kafka_local.docker_kafka_env(port).items():
            container = container.with_env(key, value)
        with container:
            if not kafka_local.wait_until_ready([("127.0.0.1", port)], 1, 120):
                raise RuntimeError("the Kafka container never answered")
            yield f"127.0.0.1:{port}"
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    # Two consecutive free ports: the client listener and the controller.
    cluster = kafka_local.start(port=kafka_local.free_port(2), nodes=1, data_dir=data_dir, owner_pid=os.getpid())
    try:
        yield cluster.bootstrap
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def broker_url(kafka_bootstrap: str) -> str:
    """The broker as the app's ``kafka://`` URL."""
    return f"kafka://{kafka_bootstrap}"


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def make_cluster(broker_url: str, tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start ``n`` workers of a fresh app (unique topics); all are killed at the end."""
    started: list[Cluster] = []

    def factory(n: int = 2, env: dict[str, str] | None = None, app_id: str | None = None) -> Cluster:
        app = app_id or uid("os")
        workers = [
            Worker(app_id=app, broker=broker_url, datadir=tmp_path / f"{app}-w{i}", env=dict(env or {})).start()
            for i in range(n)
        ]
        cluster = Cluster(workers)
        started.append(cluster)
        cluster.wait_ready()
        return cluster

    yield factory
    for c in started:
        c.stop()


@pytest.fixture(scope="module")
def cluster2(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two workers shared by a module's tests (each test uses its own product and user ids)."""
    base = tmp_path_factory.mktemp("cluster2")
    app = uid("os")
    env = {"ORDERSTREAM_GATEWAY_TIMEOUT": "2", "ORDERSTREAM_PAYMENT_TIMEOUT": "20"}
    workers = [Worker(app_id=app, broker=broker_url, datadir=base / f"w{i}", env=env).start() for i in range(2)]
    cluster = Cluster(workers)
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def one_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key on partition 0 of the app's engine: the stages check that a message is on its key's partition."""
    from app.main import engine

    monkeypatch.setattr(engine, "partitions", 1)
    monkeypatch.setattr(engine, "_partitions_by_key", {})  # its remembered partitions are for another count
