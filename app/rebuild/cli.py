"""The one command line of the rebuild: ``faust -A app rebuild`` (and ``python -m app.rebuild``).

Importing this module registers the Faust subcommand; it needs no built app until it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from faust.cli import AppCommand, option

from app.admin import bootstrap_servers
from app.rebuild.fold import compare
from app.rebuild.source import RebuildError, fetch_live, rebuild_from_kafka

USAGE = """Rebuild the read models (orders, stock, analytics) from the event topics.

Reads the orders and inventory topics from the beginning and folds them with the live
decision functions; ``--compare URL`` fetches the same models from a worker's API and
lists every difference (exit status 1 when there is any, 2 when the rebuild cannot run);
``--output FILE`` writes the rebuilt models as JSON. The last line on stdout is
``rebuilt N orders, M products from K events``."""


async def run(
    bootstrap: str,
    app_id: str,
    *,
    payment_timeout: float = 30.0,
    pending_timeout: float | None = None,
    compare_url: str | None = None,
    output: str | None = None,
    progress: bool = True,
    say: Callable[..., Any] = print,
    max_diffs: int = 50,
) -> int:
    """Rebuild, optionally write and compare; print the count line; return the exit status."""
    models = await rebuild_from_kafka(
        bootstrap, app_id, payment_timeout=payment_timeout, pending_timeout=pending_timeout, progress=progress
    )
    status = 0
    if output:
        Path(output).write_bytes(orjson.dumps(models.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        say(f"wrote {output}")
    if compare_url:
        diffs = compare(models.as_dict(), await fetch_live(compare_url))
        if diffs:
            status = 1
            say(f"{len(diffs)} difference(s) from {compare_url}:")
            for line in diffs[:max_diffs]:
                say(f"  {line}")
            if len(diffs) > max_diffs:
                say(f"  ... and {len(diffs) - max_diffs} more")
        else:
            say(f"no differences from {compare_url}: orders, stock and analytics are equal")
    extra = ", ".join(f"{k} {v}" for k, v in models.stats.items() if v and k != "events")
    say(f"{models.count_line()} ({extra})" if extra else models.count_line())
    return status


async def _run_with(settings: Any, broker: str | None, app_id: str | None, **kwargs: Any) -> int:
    try:
        return await run(
            bootstrap_servers(broker or settings.broker),
            app_id or settings.app_id,
            payment_timeout=settings.payment_timeout,
            pending_timeout=settings.pending_timeout,
            **kwargs,
        )
    except RebuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the ``python -m app.rebuild`` command line."""
    p = argparse.ArgumentParser(prog="python -m app.rebuild", description=USAGE.split("\n\n")[0])
    p.add_argument("--broker", "-b", default=None, help="Kafka URL (default: the app's settings)")
    p.add_argument("--app-id", default=None, help="app id, the topic prefix (default: the app's settings)")
    p.add_argument("--compare", metavar="URL", default=None, help="a worker's base URL to compare the models with")
    p.add_argument("--output", metavar="FILE", default=None, help="write the rebuilt models as JSON to FILE")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m app.rebuild``: settings from ``faust.ini`` and the environment, no Faust app."""
    from app.settings import load

    args = parse_args(argv)
    return asyncio.run(
        _run_with(
            load(argv=[]),
            args.broker,
            args.app_id,
            compare_url=args.compare,
            output=args.output,
            progress=args.progress,
        )
    )


async def rebuild(
    self: AppCommand,
    compare_url: str | None,
    output: str | None,
    broker: str | None,
    app_id: str | None,
    progress: bool,
) -> None:
    """Rebuild the read models (orders, stock, analytics) from the event topics."""
    from app.main import settings  # built already: `faust -A app` loaded the app before its subcommand

    status = await _run_with(
        settings, broker, app_id, compare_url=compare_url, output=output, progress=progress, say=self.say
    )
    if status:
        raise SystemExit(status)


# Faust names the subcommand after the function: `faust -A app rebuild`.
RebuildCommand = AppCommand.from_handler(
    option("--compare", "compare_url", default=None, metavar="URL", help="A worker's base URL to compare with."),
    option("--output", default=None, metavar="FILE", help="Write the rebuilt models as JSON to FILE."),
    option("--broker", "-b", default=None, help="Kafka URL (default: the app's settings)."),
    option("--app-id", default=None, help="App id, the topic prefix (default: the app's settings)."),
    option("--progress/--no-progress", default=True, help="Show a progress bar."),
)(rebuild)
