"""The Faust app, built once from the settings; ``faust -A app worker`` runs it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import faust

from app import codec, faust_fixes, logs, startup, tracing, transactions
from app.cli import flags
from app.settings import Settings, SettingsError, bind_host, load

try:
    settings: Settings = load()
except SettingsError as exc:
    raise SystemExit(f"orderstream: bad configuration: {exc}") from None
logs.configure(settings)
try:
    tracing.configure(settings)
except tracing.TracingError as exc:
    raise SystemExit(f"orderstream: {exc}") from None
flags.install()
startup.quiet_banner_for_json(settings)
codec.register()
transactions.install()
faust_fixes.install()
log = logging.getLogger("orderstream.main")


class OrderstreamApp(faust.App):
    """The Faust app, plus creating our topics before the first subscription."""

    #: True between the end of a rebalance's table recovery and the start of the next
    #: rebalance. Faust's ``recovery.completed`` is set once and never cleared, so it
    #: cannot tell a worker that is recovering a new assignment.
    settled: bool = False

    def on_rebalance_start(self) -> None:
        """Mark the tables unsettled until this rebalance's recovery completes."""
        self.settled = False
        super().on_rebalance_start()

    @property
    def clean_stop_marker(self) -> Path:
        """Present while the local table state is known to match the changelogs."""
        return Path(self.conf.tabledir).parent / "orderstream-clean-stop"

    def discard_unclean_state(self) -> None:
        """After a crash, drop the local RocksDB state: the tables recover from the changelogs.

        A killed worker's RocksDB can hold writes whose changelog records never reached
        Kafka (and no longer will), so it can be *ahead* of the changelogs; the partition's
        next owner rebuilds from the changelogs alone and the two would disagree. As
        Kafka Streams does under exactly-once, local state survives only a clean stop.
        """
        tabledir = Path(self.conf.tabledir)
        marker = self.clean_stop_marker
        if tabledir.exists() and not marker.exists():
            log.warning("unclean last stop: discarding local tables in %s, recovering from changelogs", tabledir)
            shutil.rmtree(tabledir)
        marker.unlink(missing_ok=True)

    async def on_shutdown(self) -> None:
        """Mark the local state clean once everything (tables included) has stopped."""
        await super().on_shutdown()
        if Path(self.conf.tabledir).exists():
            self.clean_stop_marker.write_text("the local tables match the changelogs\n")

    async def on_first_start(self) -> None:
        """Discard state a crash left behind, then create every topic and changelog up front."""
        self.discard_unclean_state()
        from app.admin import ensure_topics
        from app.topics import BY_NAME, DEAD_LETTERS

        names = {t.get_topic_name() for t in [*BY_NAME.values(), *DEAD_LETTERS.values()]}
        changelogs = {table.changelog_topic.get_topic_name() for table in self.tables.values()}
        await ensure_topics(
            str(self.conf.broker[0]) if len(self.conf.broker) == 1 else ",".join(map(str, self.conf.broker)),
            sorted(names | changelogs),
            settings.partitions,
            settings.replication_factor,
            compacted=changelogs,
        )
        await super().on_first_start()


def create_app(s: Settings) -> OrderstreamApp:
    """Build the Faust app from the settings."""
    options: dict[str, Any] = {}
    if s.datadir:
        options["datadir"] = s.datadir
    return OrderstreamApp(
        s.app_id,
        broker=s.broker,
        store="rocksdb://",
        processing_guarantee=s.processing_guarantee,
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
        broker_commit_interval=s.commit_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=s.producer_linger,
        producer_max_batch_size=256 * 1024,
        table_standby_replicas=s.standby_replicas,
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=min(3.0, s.session_timeout / 5),
        stream_wait_empty=False,
        Worker=startup.OrderstreamWorker,
        **options,
    )


app = create_app(settings)


@app.on_rebalance_complete.connect  # type: ignore[arg-type]  # an async receiver, awaited by the signal
async def _mark_settled(sender: Any, *args: Any, **kwargs: Any) -> None:
    """Faust signals this after a rebalance's active tables are recovered."""
    app.settled = True


@app.timer(interval=1.0)
async def _rewind_stuck() -> None:
    """Re-read what the stream went past without processing (``faust_fixes``)."""
    await faust_fixes.rewind_stuck(app)


from app import lag as _lag  # noqa: E402
from app.cli import dlq as _dlq  # noqa: E402,F401  # registers `faust -A app dlq` (it needs `app` above)

_lag.install(app)
