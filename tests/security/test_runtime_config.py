"""Issue 14 items 10 and 14: `config show` never prints a password; placeholder secrets stop the worker."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from tests.support.worker import SWITCHBOARD

REPO = Path(__file__).resolve().parents[2]
SECRETS = ("s3cret-in-query", "s3cret-in-userinfo", "s3cret-ssl", "s3cret-amqp")


def _run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return subprocess.run(
        [str(SWITCHBOARD), *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout
    )


def test_config_show_masks_passwords_in_every_url_setting() -> None:
    """Query-parameter passwords and user-info passwords are masked in every URL setting."""
    result = _run(
        {
            "SWITCHBOARD_STORE_URL": "postgresql://app@db.internal/sb?password=s3cret-in-query&sslmode=require",
            "SWITCHBOARD_REDIS_URL": "redis://:s3cret-in-userinfo@redis.internal:6379/0?ssl_keyfile_password=s3cret-ssl",
            "SWITCHBOARD_AMQP_URL": "amqps://worker:s3cret-amqp@mq.internal:5671/%2F?heartbeat=30",
        },
        "config",
        "show",
    )
    assert result.returncode == 0, result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout
    # What an operator needs to read is still there.
    assert "postgresql://app@db.internal/sb?password=****&sslmode=require" in result.stdout
    assert "redis://:****@redis.internal:6379/0" in result.stdout
    assert "amqps://worker:****@mq.internal:5671/%2F?heartbeat=30" in result.stdout


def test_config_show_masks_every_node_of_a_cluster_amqp_url() -> None:
    """Each comma-separated broker URL has its password masked, not only the first node's."""
    result = _run(
        {
            "SWITCHBOARD_AMQP_URL": "amqps://worker:s3cret-node-0@rabbit-0:5671/sb?heartbeat=30,"
            "amqps://worker:s3cret-node-1@rabbit-1:5671/sb,rabbit-2:5671",
        },
        "config",
        "show",
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret-node" not in result.stdout
    assert (
        "amqps://worker:****@rabbit-0:5671/sb?heartbeat=30,amqps://worker:****@rabbit-1:5671/sb,rabbit-2:5671"
        in result.stdout
    )


def _placeholder_secret() -> str:
    """The webhook secret the example overlay ships, read from the overlay itself."""
    overlay = yaml.safe_load((REPO / "deploy/k8s/overlays/example/kustomization.yaml").read_text())
    for generator in overlay["secretGenerator"]:
        for literal in generator.get("literals", []):
            name, _, value = literal.partition("=")
            if name == "SWITCHBOARD_PIDJ_WEBHOOK_SECRET":
                return str(value)
    raise AssertionError("no webhook secret in the example overlay")


def test_worker_refuses_the_example_overlays_placeholder_webhook_secret(tmp_path: Path) -> None:
    """`switchboard run` exits non-zero with one clear line when the webhook secret is the placeholder."""
    result = _run(
        {
            "SWITCHBOARD_STORE_URL": f"sqlite:///{tmp_path}/store.sqlite3",
            "SWITCHBOARD_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
            "SWITCHBOARD_VENDORS": "pidj",
            "SWITCHBOARD_PIDJ_ACCOUNT_KEY": "real-looking-key",
            "SWITCHBOARD_PIDJ_TOKEN": "real-looking-token",
            "SWITCHBOARD_PIDJ_WEBHOOK_SECRET": _placeholder_secret(),
        },
        "run",
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "webhook_secret" in line.lower()]
    assert lines and "placeholder" in lines[0], result.stderr
    assert _placeholder_secret() not in result.stderr


def _services() -> dict[str, dict[str, object]]:
    compose = yaml.safe_load((REPO / "deploy/docker-compose.yml").read_text())
    services: dict[str, dict[str, object]] = compose["services"]
    return services


@pytest.mark.parametrize("service", sorted(_services()))
def test_compose_publishes_ports_on_loopback_only(service: str) -> None:
    """Every port the compose file publishes (RabbitMQ's first) is bound to 127.0.0.1."""
    for port in _services()[service].get("ports", []):  # type: ignore[attr-defined]
        assert str(port).startswith("127.0.0.1:"), f"{service}: {port}"


FLOORS = {
    # package: the first release past the published advisories we know of
    "aiohttp": "3.14.3",
    "orjson": "3.9.15",
    "setuptools": "78.1.1",
}


def _requirements() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"]]


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_dependency_floors_are_past_known_advisories(package: str) -> None:
    """pyproject.toml does not allow the release just before the fix of a published advisory."""
    requirement = next(Requirement(r) for r in _requirements() if Requirement(r).name == package)
    vulnerable = Version(FLOORS[package]).release
    previous = Version(".".join(map(str, (*vulnerable[:-1], vulnerable[-1] - 1))))
    assert not requirement.specifier.contains(previous), requirement
