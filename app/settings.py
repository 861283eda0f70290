"""One frozen settings object: ``faust.ini`` < ``ORDERSTREAM_*`` environment < flags.

Every setting is documented once, here, next to its definition; the README's
configuration table is generated from the same list (``python -m app.settings``).
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INI_PATH = PROJECT_ROOT / "faust.ini"
INI_SECTION = "orderstream"
ENV_PREFIX = "ORDERSTREAM_"
SECRET_SETTINGS = frozenset({"admin_token", "smtp_url"})


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    """Everything a worker can be told; immutable once built."""

    app_id: str = field(default="orderstream", metadata=_doc("Faust app id: consumer group and topic prefix."))
    broker: str = field(default="kafka://localhost:9092", metadata=_doc("Kafka bootstrap URL(s), `kafka://host:port`."))
    processing_guarantee: str = field(
        default="exactly_once", metadata=_doc("`exactly_once` (transactions) or `at_least_once`.")
    )
    partitions: int = field(default=8, metadata=_doc("Partitions of every topic the app creates."))
    replication_factor: int = field(default=1, metadata=_doc("Replication factor of the topics the app creates."))
    web_host: str = field(default="127.0.0.1", metadata=_doc("Interface the web server binds to."))
    web_port: int = field(default=6066, metadata=_doc("Port of the web server (`--web-port`)."))
    datadir: str = field(default="", metadata=_doc("Data directory for RocksDB (`--datadir`); empty = Faust default."))
    payment_timeout: float = field(
        default=30.0, metadata=_doc("Seconds a reservation may wait for payment before the order is cancelled.")
    )
    gateway_timeout: float = field(
        default=5.0, metadata=_doc("Seconds one payment gateway call may take before it counts as failed.")
    )
    pending_timeout: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds an order may stay `pending` (lines being reserved) before it is rejected "
            "(`reservation_timeout`) and whatever it reserved is released."
        ),
    )
    gateway_concurrency: int = field(
        default=1000,
        metadata=_doc(
            "Gateway calls in flight at once per worker; waiting for a slot counts toward `gateway_timeout`, "
            "so hanging calls never hold another order past it."
        ),
    )
    gateway_max_attempts: int = field(default=4, metadata=_doc("Attempts per charge on transient gateway errors."))
    gateway_backoff: float = field(default=0.05, metadata=_doc("First retry delay in seconds; doubles per attempt."))
    session_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds without a heartbeat before a dead worker's partitions move to the others "
            "(Faust's default of 60 s stalls a killed worker's partitions for a minute)."
        ),
    )
    standby_replicas: int = field(
        default=0,
        metadata=_doc(
            "Standby copies of each table partition on other workers. 0 by default: since the recovery "
            "highwater fix standby recovery survives a SIGKILL (crash test passed with 1), but keeping "
            "standbys current cost more than it saved on 2 cores (p95 58 s vs about 23 s under the crash test)."
        ),
    )
    admin_token: str = field(
        default="", repr=False, metadata=_doc("Bearer token required by admin endpoints when set.")
    )
    notifier: str = field(default="log", metadata=_doc("`log` (record and log) or `smtp` (deliver to `smtp_url`)."))
    smtp_url: str = field(
        default="smtp://127.0.0.1:8025", repr=False, metadata=_doc("SMTP server for the `smtp` notifier.")
    )
    smtp_sender: str = field(default="orders@orderstream.local", metadata=_doc("From address of confirmations."))
    notify_max_attempts: int = field(default=3, metadata=_doc("Delivery attempts before a notification dead-letters."))
    commit_interval: float = field(
        default=0.1,
        metadata=_doc(
            "Seconds between commits of a partition's transaction (state changelogs, input offsets and, "
            "under exactly_once, outputs) while input keeps coming; an idle partition commits at once."
        ),
    )
    producer_linger: float = field(
        default=0.002,
        metadata=_doc(
            "Seconds the producer waits to fill a batch: fewer, larger produce requests for this much latency."
        ),
    )
    max_body_bytes: int = field(default=64 * 1024, metadata=_doc("Largest accepted request body; larger is a 413."))
    log_level: str = field(default="info", metadata=_doc("Log level: crit, error, warn, info, debug."))

    def redacted(self) -> dict[str, Any]:
        """Return the settings as a dict with secrets masked."""
        out = dataclasses.asdict(self)
        for name in SECRET_SETTINGS:
            if out.get(name):
                out[name] = "***"
        return out


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


_FLAG_NAMES = {"--broker": "broker", "-b": "broker", "--web-port": "web_port", "--datadir": "datadir"}
_FLAG_NAMES.update({"--web-host": "web_host", "-h": "web_host", "--loglevel": "log_level", "-l": "log_level"})


def _flags(argv: Sequence[str]) -> dict[str, str]:
    """Pick the Faust CLI flags that are also settings out of ``argv``."""
    found: dict[str, str] = {}
    args = list(argv)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in _FLAG_NAMES:
            if eq:
                found[_FLAG_NAMES[name]] = value
            elif i + 1 < len(args):
                found[_FLAG_NAMES[name]] = args[i + 1]
        elif arg.startswith("--orderstream-") and eq:
            found[name[len("--orderstream-") :].replace("-", "_")] = value
    return found


def _coerce(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"setting {name!r} must be a number, got {raw!r}") from None
    return raw


def load(
    *,
    ini_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
) -> Settings:
    """Build the settings: ``faust.ini`` < environment < command-line flags."""
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else argv
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, str] = {}
    parser = configparser.ConfigParser()
    parser.read(ini_path or INI_PATH)
    if parser.has_section(INI_SECTION):
        values.update(parser.items(INI_SECTION))
    for name in fields:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    values.update(_flags(argv))
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    typed = {name: _coerce(name, raw, fields[name].type) for name, raw in values.items()}
    settings = Settings(**typed)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if s.processing_guarantee not in ("exactly_once", "at_least_once"):
        raise SettingsError("processing_guarantee must be exactly_once or at_least_once")
    if s.notifier not in ("log", "smtp"):
        raise SettingsError("notifier must be log or smtp")
    if s.partitions < 1 or s.replication_factor < 1:
        raise SettingsError("partitions and replication_factor must be at least 1")
    if s.payment_timeout <= 0 or s.gateway_timeout <= 0:
        raise SettingsError("payment_timeout and gateway_timeout must be positive")


def markdown_table() -> str:
    """Render the configuration table for the README."""
    rows = ["| setting (`faust.ini`) | environment | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default != "" else "(empty)"
        rows.append(f"| `{f.name}` | `{ENV_PREFIX}{f.name.upper()}` | `{default}` | {f.metadata['doc']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
