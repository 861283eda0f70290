"""The Faust app, built once from the settings; ``faust -A app worker`` runs it."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

import faust

from app import codec, transactions
from app.settings import Settings, SettingsError, load

log = logging.getLogger("orderstream.app")

try:
    settings: Settings = load()
except SettingsError as exc:
    raise SystemExit(f"orderstream: bad configuration: {exc}") from None
codec.register()
transactions.install()


class OrderstreamApp(faust.App):
    """The Faust app, plus creating our topics before the first subscription."""

    async def on_first_start(self) -> None:
        """Drop local tables left by a crash, then create every topic and changelog up front."""
        self._discard_tables_after_crash()
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

    def _clean_marker(self) -> Path:
        return Path(self.conf.appdir) / "clean-shutdown"

    def _discard_tables_after_crash(self) -> None:
        """Restore from the changelogs, not local RocksDB, after an unclean shutdown.

        Under exactly-once a killed worker's RocksDB holds writes whose transaction never
        committed; replaying the committed changelog is the state every worker agrees on.
        """
        marker = self._clean_marker()
        tabledir = Path(self.conf.tabledir)
        crashed = tabledir.exists() and any(tabledir.iterdir()) and not marker.exists()
        # At least once, local RocksDB is the most complete copy (table writes not yet
        # flushed to the changelog survive there), so it is kept.
        if crashed and settings.processing_guarantee == "exactly_once":
            log.warning("unclean shutdown detected: restoring tables from their changelogs")
            shutil.rmtree(tabledir, ignore_errors=True)
        marker.unlink(missing_ok=True)

    async def on_shutdown(self) -> None:
        """Mark a clean shutdown so the next start may reuse local RocksDB."""
        await super().on_shutdown()
        with contextlib.suppress(OSError):
            self._clean_marker().touch()


def create_app(s: Settings) -> faust.App:
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
        web_bind=s.web_host,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_application_options={"client_max_size": s.max_body_bytes},
        broker_commit_interval=s.commit_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        table_standby_replicas=s.standby_replicas,
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=min(3.0, s.session_timeout / 5),
        stream_wait_empty=False,
        **options,
    )


app = create_app(settings)
