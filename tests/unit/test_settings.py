"""Settings: ``faust.ini`` < ``ORDERSTREAM_*`` environment < flags, validated and frozen."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from app.settings import (
    INI_PATH,
    Settings,
    SettingsError,
    is_loopback,
    load,
    markdown_table,
    startup_problem,
)

WORKER = ["-A", "app", "worker"]


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
        ([*WORKER, "--broker", "kafka://b:9092"], "broker", "kafka://b:9092"),
        ([*WORKER, "--broker=kafka://b:9092"], "broker", "kafka://b:9092"),
        (["--datadir", "/tmp/w1", *WORKER], "datadir", "/tmp/w1"),
        (["-D", "/tmp/w1", *WORKER], "datadir", "/tmp/w1"),
        ([*WORKER, "--web-host=worker1"], "web_host", "worker1"),
        ([*WORKER, "-h", "worker1"], "web_host", "worker1"),
        ([*WORKER, "-b", "0.0.0.0"], "web_bind", "0.0.0.0"),
        ([*WORKER, "--web-bind", "0.0.0.0"], "web_bind", "0.0.0.0"),
        ([*WORKER, "-b0.0.0.0"], "web_bind", "0.0.0.0"),  # click's attached short form (probe 17)
        ([*WORKER, "-p7001"], "web_port", 7001),
        (["-D/tmp/w1", *WORKER], "datadir", "/tmp/w1"),
        ([*WORKER, "-p", "7001"], "web_port", 7001),
        ([*WORKER, "-l", "debug"], "log_level", "debug"),
        ([*WORKER, "--loglevel=warn"], "log_level", "warn"),
        ([*WORKER, "--orderstream-processing-guarantee=at_least_once"], "processing_guarantee", "at_least_once"),
        ([*WORKER, "--orderstream-payment-timeout", "5"], "payment_timeout", 5.0),
        ([*WORKER, "--orderstream-admin-token=s3cret"], "admin_token", "s3cret"),
        ([*WORKER, "--orderstream-internal-token", "shared"], "internal_token", "shared"),
    ],
)
def test_faust_cli_flags_and_orderstream_flags_are_read(tmp_path: Path, argv: list[str], name: str, value: str) -> None:
    assert getattr(load_from(tmp_path / "none.ini", argv=argv), name) == value


def test_b_keeps_faust_meaning_and_never_sets_the_broker(tmp_path: Path) -> None:
    settings = load_from(tmp_path / "none.ini", argv=[*WORKER, "-b", "0.0.0.0"])

    assert (settings.broker, settings.web_bind) == (Settings().broker, "0.0.0.0")


def test_worker_flags_are_not_read_for_other_commands(tmp_path: Path) -> None:
    # `faust -A app rebuild -b URL` is rebuild's own broker option, not a worker setting.
    settings = load_from(tmp_path / "none.ini", argv=["-A", "app", "rebuild", "-b", "kafka://r:1", "-l", "x"])

    assert settings == Settings()


def test_a_flag_without_its_value_is_ignored(tmp_path: Path) -> None:
    assert load_from(tmp_path / "none.ini", argv=["--web-port"]).web_port == Settings().web_port


def test_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    settings = load_from(tmp_path / "none.ini", {"ORDERSTREAM_NOT_A_SETTING": "x", "PATH": "/bin"})

    assert settings == Settings()


def test_an_unknown_ini_setting_is_an_error(ini: Callable[[str], Path]) -> None:
    with pytest.raises(SettingsError, match=r"brokers is not a setting"):
        load_from(ini("brokers = kafka://typo:9092"))


def test_an_unknown_flag_setting_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"payment_timeuot is not a setting"):
        load_from(tmp_path / "none.ini", argv=["--orderstream-payment-timeuot=5"])


@pytest.mark.parametrize(
    ("source", "name"),
    [("ini", "partitions"), ("env", "web_port"), ("env", "gateway_timeout"), ("flag", "web_port")],
)
def test_a_bad_number_is_an_error(ini: Callable[[str], Path], source: str, name: str) -> None:
    environ = {f"ORDERSTREAM_{name.upper()}": "soon"} if source == "env" else {}
    argv = [*WORKER, f"--{name.replace('_', '-')}=soon"] if source == "flag" else []
    path = ini(f"{name} = soon" if source == "ini" else "")

    with pytest.raises(SettingsError, match=rf"{name}='soon' is not a (whole number|number of seconds)"):
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


# One sentence per bad value: the setting, the value, the allowed range.
BAD_VALUES = [
    ("gateway_concurrency", "0", "gateway_concurrency=0 is out of range; use a whole number from 1 to 10000."),
    ("gateway_max_attempts", "0", "gateway_max_attempts=0 is out of range; use a whole number from 1 to 100."),
    ("session_timeout", "0", "session_timeout=0 is out of range; use at least 6 and at most 1800 seconds."),
    ("commit_interval", "-1", "commit_interval=-1 is out of range; use more than 0 and at most 60 seconds."),
    ("web_port", "99999", "web_port=99999 is out of range; use a whole number from 1 to 65535."),
    ("max_body_bytes", "-5", "max_body_bytes=-5 is out of range; use a whole number from 1024 to 67108864."),
    ("log_level", "bogus", "log_level='bogus' is not allowed; use one of crit, error, warn, info, debug."),
    ("log_format", "xml", "log_format='xml' is not allowed; use one of text, json."),
    ("trace_exporter", "jaeger", "trace_exporter='jaeger' is not allowed; use one of none, console, otlp."),
    ("gateway_concurrency", "many", "gateway_concurrency='many' is not a whole number; use one from 1 to 10000."),
    (
        "payment_timeout",
        "soon",
        "payment_timeout='soon' is not a number of seconds; use more than 0 and at most 86400 seconds.",
    ),
    (
        "payment_timeout",
        "nan",
        "payment_timeout='nan' is not a number of seconds; use more than 0 and at most 86400 seconds.",
    ),
    (
        "broker",
        "localhost",
        "broker='localhost' is not a Kafka address; use kafka://host:port (several separated by commas).",
    ),
]


@pytest.mark.parametrize(("name", "value", "sentence"), BAD_VALUES, ids=[f"{n}={v}" for n, v, _ in BAD_VALUES])
def test_each_bad_value_is_one_sentence_naming_setting_value_and_range(name: str, value: str, sentence: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(ini_path=Path("/nonexistent.ini"), environ={f"ORDERSTREAM_{name.upper()}": value}, argv=[])

    assert str(caught.value) == sentence


def test_several_bad_values_give_one_sentence_each() -> None:
    environ = {"ORDERSTREAM_WEB_PORT": "99999", "ORDERSTREAM_LOG_LEVEL": "bogus"}

    with pytest.raises(SettingsError) as caught:
        load(ini_path=Path("/nonexistent.ini"), environ=environ, argv=[])

    assert str(caught.value).count(".") >= 2
    assert "web_port=99999" in str(caught.value) and "log_level='bogus'" in str(caught.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "worker1", "10.0.0.5", "::"])
def test_non_loopback_hosts(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(
    "changes", [{"web_bind": "0.0.0.0"}, {"web_host": "worker1"}, {"web_host": "worker1", "web_bind": "0.0.0.0"}]
)
def test_a_worker_beyond_loopback_needs_an_admin_token(changes: dict[str, str]) -> None:
    problem = startup_problem(dataclasses.replace(Settings(), **changes))

    assert problem and "without an admin token" in problem and "ORDERSTREAM_ADMIN_TOKEN" in problem
    assert problem.count(". ") == 0  # one sentence
    assert startup_problem(dataclasses.replace(Settings(), admin_token="t", **changes)) is None


def test_a_loopback_worker_needs_no_token() -> None:
    assert startup_problem(Settings()) is None


def test_the_interface_faust_resolved_counts_too() -> None:
    # faust's own WEB_BIND variable overrides the settings' bind: what it will listen on decides.
    problem = startup_problem(Settings(), bound="0.0.0.0")
    assert problem is not None and "0.0.0.0" in problem
    assert startup_problem(Settings(), bound="127.0.0.1") is None


def test_redacted_hides_every_secret() -> None:
    out = Settings(admin_token="a", internal_token="b", smtp_url="smtp://u:p@h").redacted()

    assert out["admin_token"] == out["internal_token"] == out["smtp_url"] == "***"


def test_every_number_setting_has_a_range() -> None:
    """A number with no bounds is a typo waiting to be a 0-second timeout or a 10-year one."""
    from app.settings import FLOAT_RANGES, INT_RANGES

    numbers = {f.name for f in dataclasses.fields(Settings) if f.type in ("float", "int", float, int)}
    assert numbers - set(FLOAT_RANGES) - set(INT_RANGES) == set()
