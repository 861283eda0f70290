"""Make ``faust -A app worker`` accept the flags the settings read (``app.settings._flags``).

Faust imports ``-A app`` while it builds the root click context, before the ``worker``
subcommand parses its options, so options appended here are known by then. They do not
reach the command's callback (``expose_value=False``): the settings have already read
them from ``sys.argv``. Faust's own worker options (``-b/--web-bind``, ``-h/--web-host``,
``-p/--web-port``, ``-l/--loglevel``) keep faust's meaning and are read, not redefined.
"""

from __future__ import annotations

import dataclasses

import click

from app.settings import Settings, flag_name


def worker_options() -> list[click.Option]:
    """Return ``--broker`` and one ``--orderstream-<setting>`` option per setting."""
    options = [
        click.Option(["--broker"], expose_value=False, metavar="URL", help="Kafka bootstrap URL(s) (setting `broker`).")
    ]
    for f in dataclasses.fields(Settings):
        doc = str(f.metadata["doc"]).replace("`", "")
        options.append(click.Option([flag_name(f.name)], expose_value=False, metavar="VALUE", help=doc))
    return options


def install() -> None:
    """Append the options to faust's ``worker`` command (once; faust's own names are never replaced)."""
    import faust.cli.worker  # noqa: F401  # registers the `worker` command with faust's click group
    from faust.cli.base import cli

    command = cli.commands["worker"]
    taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
    command.params.extend(o for o in worker_options() if not taken.intersection(o.opts))
