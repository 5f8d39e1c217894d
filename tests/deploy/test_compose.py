"""deploy/docker-compose.yml: the local stack is wired to itself and to what the worker reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from handlers import build_registry
from tests.deploy import DEPLOY
from tests.deploy.envvars import unknown

registry = build_registry()

# PyYAML is a dev dependency; without it these checks cannot run at all.
yaml = pytest.importorskip("yaml", reason="pip install pyyaml")

COMPOSE = DEPLOY / "docker-compose.yml"
WORKERS = ("worker-1", "worker-2")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    """The services, with YAML anchors and merge keys resolved as compose resolves them."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return loaded


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60}
    return float(duration[:-1]) * units[duration[-1]]


def test_has_the_whole_stack(services: dict[str, Any]) -> None:
    """RabbitMQ, Redis, two workers, one sandbox per vendor, Prometheus and Grafana."""
    sandboxes = {f"{vendor}-sandbox" for vendor in registry.vendors}
    assert {"rabbitmq", "redis", *WORKERS, *sandboxes, "prometheus", "grafana"} <= set(services)
    assert "management" in services["rabbitmq"]["image"]


def test_workers_use_the_sandboxes_and_a_shared_store(services: dict[str, Any]) -> None:
    """Each worker points every vendor at its sandbox service and port, and both share one Redis store."""
    for name in WORKERS:
        env = services[name]["environment"]
        assert env["SWITCHBOARD_STORE_URL"].startswith("redis://redis:")
        assert urlsplit(env["SWITCHBOARD_AMQP_URL"]).hostname == "rabbitmq"
        for vendor in registry.vendors:
            url = urlsplit(env[f"SWITCHBOARD_{vendor.upper()}_BASE_URL"])
            sandbox = services[f"{vendor}-sandbox"]
            assert url.hostname == f"{vendor}-sandbox"
            assert sandbox["command"][:2] == ["sandbox", vendor]
            assert sandbox["command"][sandbox["command"].index("--port") + 1] == str(url.port)
            assert "0.0.0.0" in sandbox["command"], (
                "a sandbox on 127.0.0.1 is unreachable from other containers"
            )


def test_worker_env_vars_are_real_settings(services: dict[str, Any]) -> None:
    """Every SWITCHBOARD_* variable given to the workers is one the worker reads."""
    for name in WORKERS:
        assert unknown(services[name]["environment"]) == []


def test_workers_connect_as_the_least_privileged_user(services: dict[str, Any]) -> None:
    """Workers log in as switchboard-worker on the switchboard vhost of definitions.json."""
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    for name in WORKERS:
        url = urlsplit(services[name]["environment"]["SWITCHBOARD_AMQP_URL"])
        assert url.username == "switchboard-worker"
        assert url.path == "/switchboard"
        assert url.username in {u["name"] for u in definitions["users"]}


def test_stop_grace_exceeds_the_drain_period(services: dict[str, Any]) -> None:
    """Compose waits longer than the worker drains before it kills it."""
    for name in WORKERS:
        drain = float(services[name]["environment"]["SWITCHBOARD_SHUTDOWN_GRACE_SECONDS"])
        assert _seconds(services[name]["stop_grace_period"]) >= drain + 5


def test_prometheus_scrapes_both_workers(services: dict[str, Any]) -> None:
    """prometheus.yml's worker job lists every worker service on the metrics port."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "switchboard-worker")
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    port = services[WORKERS[0]]["environment"].get("SWITCHBOARD_METRICS_PORT", "9180")
    assert targets == {f"{name}:{port}" for name in WORKERS}


def test_mounted_files_exist(services: dict[str, Any]) -> None:
    """Every bind-mounted path (./...) exists in deploy/, and Grafana loads the dashboard from where it is mounted."""
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    grafana = services["grafana"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "switchboard.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path(path) and (DEPLOY / "grafana" / "dashboards" / home.name).is_file()
