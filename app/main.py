"""The Faust app and the engine that runs the stages, built once from the settings.

``faust -A app worker`` runs the worker: Faust gives the process its lifecycle, CLI,
timers and web server; :mod:`app.engine` runs every stage of the partitions this
worker owns, as batched steps with one transaction per commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import faust

from app import codec, faust_patches, logs, startup, tracing
from app.admin import bootstrap_servers
from app.engine.dead_letters import dead_letter
from app.engine.runtime import Engine
from app.settings import Settings, SettingsError, bind_host, load
from schemas.registry import read

try:
    settings: Settings = load()
except SettingsError as exc:
    raise SystemExit(f"orderstream: bad configuration: {exc}") from None
logs.configure(settings)
try:
    tracing.configure(settings)
except tracing.TracingError as exc:
    raise SystemExit(f"orderstream: {exc}") from None
try:
    faust_patches.install(settings)
except faust_patches.UntestedVersion as exc:
    raise SystemExit(f"orderstream: {exc}") from None
codec.register()
log = logging.getLogger("orderstream.main")


def app_topics() -> tuple[list[str], set[str]]:
    """Every Kafka topic of the app (inputs, their dead-letter topics, changelogs), and the changelogs."""
    dead_letter_topics = {f"{name}.dlq" for name in engine.topics if not name.endswith(".dlq")}
    changelogs = {store.changelog for store in engine.stores.values()}
    return sorted(set(engine.topics) | dead_letter_topics | changelogs), changelogs


class OrderstreamApp(faust.App):
    """The Faust app: starts the engine once the worker is up, stops it first on the way down."""

    async def on_first_start(self) -> None:
        """Create every topic and changelog up front (a fresh cluster's first worker would own nothing)."""
        from app.admin import ensure_topics

        names, changelogs = app_topics()
        await ensure_topics(
            settings.broker, names, settings.partitions, settings.replication_factor, compacted=changelogs
        )
        await super().on_first_start()

    async def on_started(self) -> None:
        """Join the engine's group once the web server answers (peers find us by our URL)."""
        await super().on_started()
        await engine.start(str(self.conf.canonical_url).rstrip("/"))

    async def on_stop(self) -> None:
        """Commit and leave the group before Faust stops its services (within ``stop_timeout``)."""
        _exit_if_still_stopping_after(settings.stop_timeout)
        await engine.stop()
        from app.web import routing

        await routing.close()  # an open client session is reported on stderr when the process exits
        await super().on_stop()


def _exit_if_still_stopping_after(seconds: float) -> None:
    """End the process if its stop has not ended it within ``seconds`` (a thread: the loop may be stuck).

    With the broker unreachable a stop can wait for ever (a commit, a producer's flush, the
    group's goodbye); what it did not commit is read again by the partitions' next owner, as
    after a SIGKILL.
    """

    def give_up() -> None:
        # Straight to the file descriptor: the logging handler's lock may be what is stuck (a
        # full stderr pipe), and this line must not wait for it.
        with contextlib.suppress(OSError):
            os.write(
                2, f"orderstream: the worker did not stop within {seconds:g} s (stop_timeout): it exits now\n".encode()
            )
        os._exit(1)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True  # a stop that ends in time is not held up by it
    timer.start()


#: Seconds before faust's stall checks on its own consumer speak: never, in practice (ten years).
FAUST_STALL_CHECK_OFF = 10 * 365 * 86_400.0


def create_app(s: Settings) -> OrderstreamApp:
    """Build the Faust app from the settings."""
    options: dict[str, Any] = {}
    if s.datadir:
        options["datadir"] = s.datadir
    return OrderstreamApp(
        s.app_id,
        broker=s.broker,
        store="memory://",
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        key_serializer="raw",
        value_serializer=codec.CODEC_NAME,
        web_enabled=True,
        web_host=s.web_host,
        web_port=s.web_port,
        web_bind=bind_host(s),
        web_tables_enabled=False,
        web_router_enabled=False,
        web_application_options={"client_max_size": s.max_body_bytes},
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=min(3.0, s.session_timeout / 5),
        # Faust's own consumer carries only its assignor's leader topic, which it never fetches
        # (the engine reads every stage topic with its own consumer and reports its own lag):
        # its stall checks would log an ERROR "has not sent fetch request" 5 minutes after start.
        stream_processing_timeout=FAUST_STALL_CHECK_OFF,
        Worker=startup.OrderstreamWorker,
        **options,
    )


app = create_app(settings)


def create_engine(s: Settings, datadir: Path) -> Engine:
    """Build the engine from the settings."""
    return Engine(
        app_id=s.app_id,
        bootstrap=bootstrap_servers(s.broker),
        partitions=s.partitions,
        exactly_once=s.processing_guarantee == "exactly_once",
        commit_interval=s.commit_interval,
        datadir=datadir,
        linger_ms=int(s.producer_linger * 1000),
        session_timeout_ms=int(s.session_timeout * 1000),
        decode=read,
        dead_letter=dead_letter,
        give_up_after=s.store_give_up,
        flush_after=s.store_flush_after,
    )


engine = create_engine(settings, Path(app.conf.datadir) / "engine")

from app.cli import dlq as _dlq  # noqa: E402,F401  # registers `faust -A app dlq` (it needs `app` above)
