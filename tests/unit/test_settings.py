"""Settings: ``faust.ini`` < ``ORDERSTREAM_*`` environment < flags, validated and frozen."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from app.settings import INI_PATH, Settings, SettingsError, load, markdown_table


@pytest.fixture
def ini(tmp_path: Path) -> Callable[[str], Path]:
    """Write an ``[orderstream]`` section to a fresh ini file and return its path."""

    def write(body: str) -> Path:
        path = tmp_path / "faust.ini"
        path.write_text(f"[orderstream]\n{body}\n")
        return path

    return write


def load_from(ini_path: Path, environ: Mapping[str, str] | None = None, argv: Sequence[str] = ()) -> Settings:
    return load(ini_path=ini_path, environ=environ or {}, argv=list(argv))


def test_nothing_given_means_the_defaults(tmp_path: Path) -> None:
    assert load_from(tmp_path / "missing.ini") == Settings()


def test_the_shipped_faust_ini_loads() -> None:
    settings = load_from(INI_PATH)

    assert settings.processing_guarantee == "exactly_once"


def test_ini_overrides_defaults(ini: Callable[[str], Path]) -> None:
    settings = load_from(ini("broker = kafka://ini:9092\npartitions = 3\npayment_timeout = 12.5"))

    assert settings.broker == "kafka://ini:9092"
    assert settings.partitions == 3
    assert settings.payment_timeout == 12.5


def test_environment_overrides_ini(ini: Callable[[str], Path]) -> None:
    environ = {"ORDERSTREAM_BROKER": "kafka://env:9092", "ORDERSTREAM_PAYMENT_TIMEOUT": "7"}

    settings = load_from(ini("broker = kafka://ini:9092\npayment_timeout = 12.5"), environ)

    assert settings.broker == "kafka://env:9092"
    assert settings.payment_timeout == 7.0


def test_flags_override_environment_and_ini(ini: Callable[[str], Path]) -> None:
    environ = {"ORDERSTREAM_BROKER": "kafka://env:9092", "ORDERSTREAM_WEB_PORT": "7000"}

    settings = load_from(
        ini("broker = kafka://ini:9092\nweb_port = 6000"),
        environ,
        ["worker", "--broker=kafka://flag:9092", "--web-port", "8000"],
    )

    assert settings.broker == "kafka://flag:9092"
    assert settings.web_port == 8000


def test_each_layer_only_overrides_what_it_sets(ini: Callable[[str], Path]) -> None:
    settings = load_from(
        ini("broker = kafka://ini:9092\npartitions = 3\ngateway_timeout = 2"),
        {"ORDERSTREAM_PARTITIONS": "4", "ORDERSTREAM_GATEWAY_TIMEOUT": "3"},
        ["--orderstream-gateway-timeout=4"],
    )

    assert (settings.broker, settings.partitions, settings.gateway_timeout) == ("kafka://ini:9092", 4, 4.0)


@pytest.mark.parametrize(
    ("argv", "name", "value"),
    [
        (["-b", "kafka://b:9092"], "broker", "kafka://b:9092"),
        (["--datadir", "/tmp/w1"], "datadir", "/tmp/w1"),
        (["--web-host=0.0.0.0"], "web_host", "0.0.0.0"),
        (["-l", "debug"], "log_level", "debug"),
        (["--loglevel=warn"], "log_level", "warn"),
        (["--orderstream-processing-guarantee=at_least_once"], "processing_guarantee", "at_least_once"),
        (["--orderstream-admin-token=s3cret"], "admin_token", "s3cret"),
    ],
)
def test_faust_cli_flags_and_orderstream_flags_are_read(tmp_path: Path, argv: list[str], name: str, value: str) -> None:
    assert getattr(load_from(tmp_path / "none.ini", argv=argv), name) == value


def test_a_flag_without_its_value_is_ignored(tmp_path: Path) -> None:
    assert load_from(tmp_path / "none.ini", argv=["--web-port"]).web_port == Settings().web_port


def test_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    settings = load_from(tmp_path / "none.ini", {"ORDERSTREAM_NOT_A_SETTING": "x", "PATH": "/bin"})

    assert settings == Settings()


def test_an_unknown_ini_setting_is_an_error(ini: Callable[[str], Path]) -> None:
    with pytest.raises(SettingsError, match=r"unknown setting.*brokers"):
        load_from(ini("brokers = kafka://typo:9092"))


def test_an_unknown_flag_setting_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"unknown setting.*payment_timeuot"):
        load_from(tmp_path / "none.ini", argv=["--orderstream-payment-timeuot=5"])


@pytest.mark.parametrize(
    ("source", "name"),
    [("ini", "partitions"), ("env", "web_port"), ("env", "gateway_timeout"), ("flag", "web_port")],
)
def test_a_bad_number_is_an_error(ini: Callable[[str], Path], source: str, name: str) -> None:
    environ = {f"ORDERSTREAM_{name.upper()}": "soon"} if source == "env" else {}
    argv = [f"--{name.replace('_', '-')}=soon"] if source == "flag" else []
    path = ini(f"{name} = soon" if source == "ini" else "")

    with pytest.raises(SettingsError, match=rf"{name}.*must be a number"):
        load_from(path, environ, argv)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("processing_guarantee", "maybe_once"),
        ("notifier", "pigeon"),
        ("partitions", "0"),
        ("replication_factor", "0"),
        ("payment_timeout", "0"),
        ("gateway_timeout", "-1"),
    ],
)
def test_unusable_values_are_refused(ini: Callable[[str], Path], setting: str, value: str) -> None:
    with pytest.raises(SettingsError, match=setting):
        load_from(ini(f"{setting} = {value}"))


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_both_processing_guarantees_are_accepted(ini: Callable[[str], Path], guarantee: str) -> None:
    assert load_from(ini(f"processing_guarantee = {guarantee}")).processing_guarantee == guarantee


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().broker = "kafka://elsewhere:9092"  # type: ignore[misc]  # the point of the test


def test_redacted_hides_the_admin_token(tmp_path: Path) -> None:
    settings = load_from(tmp_path / "none.ini", {"ORDERSTREAM_ADMIN_TOKEN": "s3cret-t0ken"})

    out = settings.redacted()

    assert out["admin_token"] == "***"
    assert "s3cret-t0ken" not in repr(out)
    assert out["broker"] == settings.broker


def test_redacted_shows_an_unset_admin_token_as_empty() -> None:
    assert Settings().redacted()["admin_token"] == ""


def test_every_setting_is_documented_in_the_table() -> None:
    table = markdown_table()

    for f in dataclasses.fields(Settings):
        assert f.metadata["doc"]
        assert f"`ORDERSTREAM_{f.name.upper()}`" in table
