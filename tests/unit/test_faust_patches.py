"""The patches to faust's internals: each one runs, and an untested version refuses to start."""

from __future__ import annotations

import pytest

from app import faust_patches


def test_every_patch_runs_on_the_tested_versions() -> None:
    from faust.cli.base import cli

    from app.main import settings

    faust_patches.install(settings)
    assert "worker flags" in faust_patches.installed
    options = {opt for param in cli.commands["worker"].params for opt in getattr(param, "opts", [])}
    assert {"--broker", "--orderstream-payment-timeout"} <= options
    assert "-b" in options  # faust's own --web-bind keeps its short name


def test_the_json_banner_hook_replaces_faust_s() -> None:
    from faust.cli import worker as worker_cli

    from app import startup
    from app.main import settings

    before = worker_cli.worker.on_worker_created
    try:
        assert startup.quiet_banner_for_json(settings.__class__(**{**settings.__dict__, "log_format": "json"}))
        assert worker_cli.worker.on_worker_created is not before
    finally:
        worker_cli.worker.on_worker_created = before  # type: ignore[method-assign]


@pytest.mark.parametrize(("name", "have"), [("faust-streaming", "0.16.0"), ("aiokafka", "0.13.1")])
def test_an_untested_version_refuses_with_one_sentence(name: str, have: str) -> None:
    with pytest.raises(faust_patches.UntestedVersion) as caught:
        faust_patches.check_versions({name: have})
    text = str(caught.value)
    assert f"{name} {have} is installed" in text and text.count(". ") == 0


def test_the_installed_versions_are_the_tested_ones() -> None:
    faust_patches.check_versions()
