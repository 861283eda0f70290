"""docker/: the compose file and the Dockerfile keep their secure, cache-friendly shape.

No Docker engine runs here, so this checks the files' structure, not a running stack.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.support import ROOT

DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCKER / "compose.yml").read_text()))


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name.startswith("worker")}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    assert {"kafka", "prometheus", "grafana"} <= set(compose["services"])
    assert len(workers(compose)) >= 2


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = [(name, p) for name, s in compose["services"].items() for p in s.get("ports", [])]
    assert published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_workers_advertise_their_service_name_and_bind_all_interfaces(compose: dict[str, Any]) -> None:
    for name, service in workers(compose).items():
        env = service["environment"]
        assert env["ORDERSTREAM_WEB_HOST"] == name == service["hostname"]
        assert env["ORDERSTREAM_WEB_BIND"] == "0.0.0.0"
        assert env["ORDERSTREAM_BROKER"] == "kafka://kafka:9092"


def test_workers_require_an_admin_token(compose: dict[str, Any]) -> None:
    for service in workers(compose).values():
        assert re.fullmatch(r"\$\{ORDERSTREAM_ADMIN_TOKEN:\?.+\}", service["environment"]["ORDERSTREAM_ADMIN_TOKEN"])
    grafana = compose["services"]["grafana"]["environment"]
    assert "ORDERSTREAM_ADMIN_TOKEN:?" in grafana["GF_SECURITY_ADMIN_PASSWORD"]


def test_stop_grace_period_exceeds_the_workers_stop_time(compose: dict[str, Any]) -> None:
    # mode waits up to 60 s for a service to stop; a clean stop measured 2.4 s idle here.
    for name, service in workers(compose).items():
        assert seconds(service["stop_grace_period"]) > 60, name


def test_prometheus_scrapes_every_worker(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:6066" for name in workers(compose)}


def test_grafana_dashboard_is_json() -> None:
    for path in (DOCKER / "grafana").rglob("*.json"):
        assert json.loads(path.read_text())["panels"]


def dockerfile() -> list[str]:
    lines, joined = [], ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        joined += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            lines.append(joined.strip())
            joined = ""
    return lines


def test_dockerfile_is_multi_stage_on_a_pinned_base() -> None:
    lines = dockerfile()
    base = next(line for line in lines if line.startswith("ARG PYTHON_IMAGE="))
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2 and all(" AS " in s for s in stages)


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    lines = dockerfile()
    copy_pyproject = lines.index("COPY pyproject.toml ./")
    install_deps = next(i for i, line in enumerate(lines) if "pip install -r requirements.txt" in line)
    first_code = next(i for i, line in enumerate(lines) if line.startswith("COPY app"))
    assert copy_pyproject < install_deps < first_code


def test_image_has_no_tests_and_runs_as_a_user() -> None:
    lines = dockerfile()
    copies = [line for line in lines if line.startswith("COPY")]
    assert not any(line.split()[1] in (".", "tests", "./tests") for line in copies)
    assert "tests" in (DOCKER / "Dockerfile.dockerignore").read_text().split()
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    assert not any("ORDERSTREAM_WEB_HOST=0.0.0.0" in line for line in lines)


def test_every_metric_family_is_on_a_grafana_panel() -> None:
    from app import metrics

    dashboard = json.loads((DOCKER / "grafana/dashboards/orderstream.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    families = {m.name for m in metrics.REGISTRY.collect() if m.name.startswith("orderstream_")}
    missing = sorted(f for f in families if f not in exprs)
    assert not missing, f"no panel shows {missing}"
    assert "[1m]" not in exprs, "use $__rate_interval"
