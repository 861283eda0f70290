"""Every change this project makes to faust-streaming's, aiokafka's and aiohttp's internals, in one place.

The stages no longer run on faust's stream, table or transaction machinery (see
:mod:`app.engine`), so what is left is small: two additions to faust's ``worker`` command
line and two wrappers around aiohttp's connection handling. The engine
relies on aiokafka's transactional producer and its assignor interface. All were written
and tested against the versions in :data:`TESTED`; on any other version :func:`install`
refuses to start with one sentence, rather than run patches that may no longer do what
they say.

* :func:`app.cli.flags.install` — ``faust -A app worker`` accepts ``--broker`` and
  ``--orderstream-<setting>`` (faust's click command gets the options appended).
* :func:`app.startup.quiet_banner_for_json` — with ``log_format=json`` faust's start-up
  banner (a text table on stdout) becomes one log record.
* :func:`app.faust_patches.parser_errors.install` — a request aiohttp's HTTP parser refuses (before
  any route or middleware) is answered in the JSON error shape, not plain text.
* :func:`app.faust_patches.parser_errors.install_expect` — ``Expect: 100-continue`` with a declared
  body past ``max_body_bytes`` is a ``413`` before the body is sent; an unknown expectation a
  JSON ``417``.
* :func:`app.faust_patches.connections.install` — the web server closes a connection that sends
  no request head in 10 s, refuses connections past a quarter of the descriptor limit, and
  cancels a handler whose client left (aiohttp's ``handler_cancellation``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

#: The versions every patch here was tested with.
TESTED = {"faust-streaming": ("0.15",), "aiokafka": ("0.14",), "aiohttp": ("3.14",)}

#: Which patches ran (a test checks each one did).
installed: list[str] = []


class UntestedVersion(RuntimeError):
    """A package runs in a version the patches were not tested with."""


def check_versions(found: dict[str, str] | None = None) -> None:
    """Raise :class:`UntestedVersion` (one sentence) unless every package is a tested version."""
    for name, prefixes in TESTED.items():
        try:
            have = (found or {}).get(name) or version(name)
        except PackageNotFoundError:
            have = "not installed"
        if not any(have == p or have.startswith(p + ".") for p in prefixes):
            raise UntestedVersion(
                f"{name} {have} is installed, but orderstream's patches to it were tested with "
                f"{' or '.join(p + '.x' for p in prefixes)} only; install that version "
                f"(pip install -e .) or re-test app/faust_patches before changing the pin."
            )


def install(settings: Any) -> None:
    """Check the versions, then install every patch (once)."""
    check_versions()
    if installed:
        return
    from app import startup
    from app.cli import flags
    from app.faust_patches import connections, parser_errors

    flags.install()
    installed.append("worker flags")
    parser_errors.install()
    installed.append("json parser errors")
    parser_errors.install_expect(settings.max_body_bytes)
    installed.append("expect header")
    connections.install()
    installed.append("connection limits")
    if startup.quiet_banner_for_json(settings):
        installed.append("json banner")
