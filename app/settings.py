"""One frozen settings object: ``faust.ini`` < ``ORDERSTREAM_*`` environment < flags.

Every setting is documented once, here, next to its definition; the README's
configuration table is generated from the same list (``python -m app.settings``).
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import math
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
SECRET_SETTINGS = frozenset({"admin_token", "internal_token", "smtp_url"})


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    """Everything a worker can be told; immutable once built."""

    app_id: str = field(
        default="orderstream",
        metadata=_doc("App id: topic prefix; consumer groups `{app_id}.engine` (stages) and `{app_id}` (Faust)."),
    )
    broker: str = field(default="kafka://localhost:9092", metadata=_doc("Kafka bootstrap URL(s), `kafka://host:port`."))
    processing_guarantee: str = field(
        default="exactly_once", metadata=_doc("`exactly_once` (transactions) or `at_least_once`.")
    )
    partitions: int = field(default=8, metadata=_doc("Partitions of every topic the app creates."))
    replication_factor: int = field(default=1, metadata=_doc("Replication factor of the topics the app creates."))
    web_host: str = field(
        default="127.0.0.1",
        metadata=_doc(
            "Host name the other workers and clients use to reach this worker (its canonical URL, "
            "`--web-host`/`-h`); also the interface bound when `web_bind` is empty."
        ),
    )
    web_bind: str = field(
        default="",
        metadata=_doc(
            "Interface the web server binds to (`--web-bind`/`-b`), e.g. `0.0.0.0` in a container; "
            "empty = `web_host`. Beyond loopback a worker needs `admin_token`."
        ),
    )
    web_port: int = field(default=6066, metadata=_doc("Port of the web server (`--web-port`)."))
    datadir: str = field(default="", metadata=_doc("Data directory for RocksDB (`--datadir`); empty = Faust default."))
    store_give_up: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds a partition's RocksDB may fail to open or restore (a full or read-only disk) before the "
            "worker stops, as on SIGTERM but with exit status 1, so that the group hands its partitions to the "
            "other workers."
        ),
    )
    store_flush_after: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds a commit may stay only in RocksDB's memtable (there is no write-ahead log: the changelogs "
            "are the log) before it is flushed to disk: bounds what recovery replays after a SIGKILL. A flush "
            "that fails (a full disk) is reported within a second, as a failed commit is."
        ),
    )
    stop_timeout: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds a stopping worker (SIGTERM, Ctrl-C) may take to commit and leave the group; past them it "
            "exits at once, as a SIGKILL would end it (with the broker unreachable, a stop waited for ever)."
        ),
    )
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
            "(`reservation_timeout`) and whatever it reserved is released; also the longest an ending "
            "order waits for its releases before it ends anyway."
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
    admin_token: str = field(
        default="",
        repr=False,
        metadata=_doc(
            "Bearer token required by admin endpoints when set; a worker listening beyond loopback "
            "refuses to start without one."
        ),
    )
    internal_token: str = field(
        default="",
        repr=False,
        metadata=_doc(
            "Shared secret of worker-to-worker calls; every worker of a cluster needs the same. "
            "Empty = derived from `admin_token`, `app_id` and the Kafka cluster's id."
        ),
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
            "under exactly_once, outputs); under exactly_once an idle partition also commits at once."
        ),
    )
    producer_linger: float = field(
        default=0.002,
        metadata=_doc(
            "Seconds the producer waits to fill a batch: fewer, larger produce requests for this much latency."
        ),
    )
    max_body_bytes: int = field(default=64 * 1024, metadata=_doc("Largest accepted request body; larger is a 413."))
    log_level: str = field(
        default="info", metadata=_doc("Log level (`-l`/`--loglevel`): crit, error, warn, info, debug.")
    )
    log_format: str = field(
        default="text", metadata=_doc("`text` (one human line per record) or `json` (one JSON object per line).")
    )
    trace_exporter: str = field(
        default="none",
        metadata=_doc(
            "OpenTelemetry span exporter: `none` (the default: no span recorded, the W3C traceparent "
            "still carried in the Kafka headers from the edge through every stage), `console` (spans as "
            "JSON on stderr) or `otlp` (OTLP/HTTP to `otlp_endpoint`; needs the `otlp` extra)."
        ),
    )
    otlp_endpoint: str = field(
        default="http://127.0.0.1:4318/v1/traces",
        metadata=_doc("Where the `otlp` trace exporter sends spans (OTLP over HTTP)."),
    )

    def redacted(self) -> dict[str, Any]:
        """Return the settings as a dict with secrets masked."""
        out = dataclasses.asdict(self)
        for name in SECRET_SETTINGS:
            if out.get(name):
                out[name] = "***"
        return out


class SettingsError(ValueError):
    """One or more settings have a value that cannot be used (one sentence each)."""


# --- command-line flags ----------------------------------------------------------------
#
# The app (and so the settings) is built when faust imports ``-A app``, before click parses
# the subcommand's options, so the flags are read from ``sys.argv`` here; ``app.cli.flags``
# registers the same flags on faust's ``worker`` command so that click accepts them.
# Faust's own worker options keep faust's meaning (``-b`` is ``--web-bind``, ``-h`` is
# ``--web-host``); the only new ones are ``--broker`` and ``--orderstream-<setting>``.

#: faust's global options that take a value (they come before the subcommand).
_GLOBAL_WITH_VALUE = {"-A", "--app", "-W", "--workdir", "-D", "--datadir", "-L", "--loop"}
#: Global flags that are settings.
_GLOBAL_FLAGS = {"--datadir": "datadir", "-D": "datadir"}
#: Worker flags that are settings: faust's own (same meaning) plus ``--broker``.
WORKER_FLAGS = {
    "--broker": "broker",
    "--web-port": "web_port",
    "-p": "web_port",
    "--web-host": "web_host",
    "-h": "web_host",
    "--web-bind": "web_bind",
    "-b": "web_bind",
    "--loglevel": "log_level",
    "-l": "log_level",
}
FLAG_PREFIX = "--orderstream-"


def flag_name(setting: str) -> str:
    """Return the ``--orderstream-...`` flag of a setting."""
    return FLAG_PREFIX + setting.replace("_", "-")


def _flags(argv: Sequence[str]) -> dict[str, str]:
    """Pick the settings out of a ``faust [global options] <command> [options]`` command line."""
    found: dict[str, str] = {}
    args = list(argv)
    command: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
        elif len(arg) > 2 and arg[0] == "-" and (arg[:2] in _GLOBAL_WITH_VALUE or arg[:2] in WORKER_FLAGS):
            name, eq, value = arg[:2], "=", arg[2:]  # click's attached short form: -b0.0.0.0
        else:
            name, eq, value = arg, "", ""
        if not eq and i + 1 < len(args):
            value = args[i + 1]
        takes_value = False
        if command is None and name in _GLOBAL_WITH_VALUE:
            takes_value = True
            if name in _GLOBAL_FLAGS and (eq or i + 1 < len(args)):
                found[_GLOBAL_FLAGS[name]] = value
        elif command is None and not arg.startswith("-"):
            command = arg
        elif name.startswith(FLAG_PREFIX):
            takes_value = True
            if eq or i + 1 < len(args):
                found[name[len(FLAG_PREFIX) :].replace("-", "_")] = value
        elif command == "worker" and name in WORKER_FLAGS:
            takes_value = True
            if eq or i + 1 < len(args):
                found[WORKER_FLAGS[name]] = value
        i += 2 if takes_value and not eq else 1
    return found


# --- loading ---------------------------------------------------------------------------


def load(
    *,
    ini_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
) -> Settings:
    """Build the settings: ``faust.ini`` < environment < command-line flags; raise ``SettingsError``."""
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
    problems = [
        f"{name} is not a setting (see `python -m app.settings` for the list)."
        for name in sorted(set(values) - set(fields))
    ]
    typed: dict[str, Any] = {}
    for name, raw in values.items():
        if name in fields:
            try:
                typed[name] = _coerce(name, raw.strip(), fields[name].type)
            except SettingsError as exc:
                problems.append(str(exc))
    if problems:
        raise SettingsError(" ".join(problems))
    settings = Settings(**typed)
    problems = validate(settings)
    if problems:
        raise SettingsError(" ".join(problems))
    return settings


def _coerce(name: str, raw: str, kind: Any) -> Any:
    if kind in (int, "int"):
        try:
            return int(raw)
        except ValueError:
            low, high = INT_RANGES[name]
            raise SettingsError(f"{name}={raw!r} is not a whole number; use one from {low} to {high}.") from None
    if kind in (float, "float"):
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise SettingsError(f"{name}={raw!r} is not a number of seconds; {_float_range(name)} seconds.") from None
        return value
    return raw.lower() if name in CHOICES else raw


# --- validation: one sentence per bad value --------------------------------------------

#: Whole-number settings and their allowed range (inclusive).
INT_RANGES: dict[str, tuple[int, int]] = {
    "partitions": (1, 1024),
    "replication_factor": (1, 32),
    "web_port": (1, 65535),
    "gateway_concurrency": (1, 10_000),
    "gateway_max_attempts": (1, 100),
    "notify_max_attempts": (1, 100),
    "max_body_bytes": (1024, 64 * 1024 * 1024),
}
#: Seconds settings: (lowest, lowest allowed itself?, highest).
FLOAT_RANGES: dict[str, tuple[float, bool, float]] = {
    "payment_timeout": (0, False, 86_400),
    "gateway_timeout": (0, False, 3_600),
    "pending_timeout": (0, False, 86_400),
    "store_give_up": (1, True, 86_400),
    # Far below the changelogs' tombstone retention (delete.retention.ms, 24 h by default).
    "store_flush_after": (1, True, 3_600),
    "stop_timeout": (1, True, 3_600),
    "gateway_backoff": (0, True, 60),
    # Kafka's default group.min.session.timeout.ms is 6 s and group.max.session.timeout.ms 30 min.
    "session_timeout": (6, True, 1_800),
    "commit_interval": (0, False, 60),
    "producer_linger": (0, True, 10),
}
#: Settings with a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    "processing_guarantee": ("exactly_once", "at_least_once"),
    "notifier": ("log", "smtp"),
    "log_level": ("crit", "error", "warn", "info", "debug"),
    "log_format": ("text", "json"),
    "trace_exporter": ("none", "console", "otlp"),
}


def _float_range(name: str) -> str:
    low, inclusive, high = FLOAT_RANGES[name]
    return f"use {'at least' if inclusive else 'more than'} {low:g} and at most {high:g}"


def _check_broker(url: str) -> str | None:
    parts = [p.strip() for p in url.replace(";", ",").split(",") if p.strip()]
    if not parts:
        return "broker is empty; use kafka://host:port (several separated by commas)."
    for part in parts:
        host, _, port = part.split("://", 1)[-1].rstrip("/").rpartition(":")
        scheme = part.split("://", 1)[0] if "://" in part else "kafka"
        if scheme != "kafka" or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            return f"broker={url!r} is not a Kafka address; use kafka://host:port (several separated by commas)."
    return None


def validate(s: Settings) -> list[str]:
    """Return one sentence per unusable value (empty when all are fine)."""
    problems: list[str] = []
    for name, (low, high) in INT_RANGES.items():
        value = getattr(s, name)
        if not low <= value <= high:
            problems.append(f"{name}={value} is out of range; use a whole number from {low} to {high}.")
    for name, (flow, inclusive, fhigh) in FLOAT_RANGES.items():
        fvalue = getattr(s, name)
        if not ((fvalue >= flow if inclusive else fvalue > flow) and fvalue <= fhigh):
            problems.append(f"{name}={fvalue:g} is out of range; {_float_range(name)} seconds.")
    for name, allowed in CHOICES.items():
        value = getattr(s, name)
        if value not in allowed:
            problems.append(f"{name}={value!r} is not allowed; use one of {', '.join(allowed)}.")
    if not s.app_id or not all(c.isascii() and (c.isalnum() or c in "._-") for c in s.app_id):
        problems.append(
            f"app_id={s.app_id!r} is not usable as a topic prefix; use ASCII letters, digits, '.', '_', '-'."
        )
    if broker_problem := _check_broker(s.broker):
        problems.append(broker_problem)
    if not s.web_host.strip():
        problems.append("web_host is empty; use the host name other workers reach this worker at.")
    if s.trace_exporter == "otlp" and not s.otlp_endpoint.startswith(("http://", "https://")):
        problems.append(
            f"otlp_endpoint={s.otlp_endpoint!r} is not an HTTP URL; use e.g. http://collector:4318/v1/traces."
        )
    if s.notifier == "smtp" and not s.smtp_url.startswith(("smtp://", "smtps://")):
        problems.append("smtp_url is not an smtp:// or smtps:// URL (its value is secret and not shown).")
    return problems


# --- derived values and start-up rules -------------------------------------------------


def bind_host(s: Settings) -> str:
    """Return the interface the web server listens on."""
    return s.web_bind or s.web_host


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_problem(s: Settings, bound: str | None = None) -> str | None:
    """Return why a worker with these settings must not start, in one sentence, or None.

    ``bound``: the interface faust will listen on, as it resolved it (its own ``WEB_BIND``
    variable or a flag spelled in a way the settings did not read could differ from them).
    """
    hosts = (bind_host(s), s.web_host, *((bound,) if bound else ()))
    exposed = [h for h in dict.fromkeys(hosts) if not is_loopback(h)]
    if exposed and not s.admin_token:
        return (
            f"the web server would be reachable beyond loopback ({', '.join(exposed)}) without an admin token, "
            "so anyone who can reach it could change stock, ship orders and redrive dead letters: "
            "set ORDERSTREAM_ADMIN_TOKEN (or bind to 127.0.0.1)."
        )
    return None


def markdown_table() -> str:
    """Render the configuration table for the README."""
    rows = ["| setting (`faust.ini`) | environment / flag | default | allowed | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default != "" else "(empty)"
        where = f"`{ENV_PREFIX}{f.name.upper()}`<br>`{flag_name(f.name)}`"
        rows.append(f"| `{f.name}` | {where} | `{default}` | {allowed(f.name)} | {f.metadata['doc']} |")
    return "\n".join(rows)


def allowed(name: str) -> str:
    """Describe a setting's allowed values for the table."""
    if name in INT_RANGES:
        return "{} – {}".format(*INT_RANGES[name])
    if name in FLOAT_RANGES:
        low, inclusive, high = FLOAT_RANGES[name]
        return f"{'≥' if inclusive else '>'} {low:g}, ≤ {high:g} s"
    if name in CHOICES:
        return ", ".join(f"`{c}`" for c in CHOICES[name])
    return ""


if __name__ == "__main__":
    print(markdown_table())
