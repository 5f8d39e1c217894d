"""A publisher needs only ``switchboard``, not the ``worker`` extra (issue 16, item 8)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.amqp import AMQP_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Import names of the worker extra's packages (and aiohttp's server half, which the worker uses).
WORKER_ONLY = (
    "aiohttp.web",
    "asyncpg",
    "redis",
    "prometheus_client",
    "opentelemetry",
    "pydantic_settings",
    "click",
)

PUBLISHER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = tuple(sys.argv[2].split(","))

    class NotInstalled(importlib.abc.MetaPathFinder):
        # Stands for a publisher's virtualenv without the worker extra.
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: worker extra)", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())

    from worker.client import Switchboard
    from worker.errors import InvalidPayload

    text = {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "hi"}
    found = {}
    with Switchboard(sys.argv[1]) as sb:
        found["sent"] = sb.send("send_text", text, id="install-check-1")
        for name, payload in (
            ("schema", {**text, "to_number": "555"}),
            ("check", {**text, "to_number": "+15555553333"}),
        ):
            try:
                sb.send("send_text", payload, id="install-check-bad")
            except InvalidPayload as exc:
                found[name] = exc.as_event_error()
    loaded = {m.split(".")[0] for m in sys.modules} | {m for m in sys.modules if m.startswith("aiohttp.")}
    found["loaded"] = sorted(b for b in BLOCKED if b in loaded)
    print(json.dumps(found))
    """
)


def test_client_publishes_and_validates_without_the_worker_extra(broker: None) -> None:
    """With every worker-only package unimportable, the client loads, runs the commands' checks and publishes."""
    ran = subprocess.run(
        [sys.executable, "-c", PUBLISHER, AMQP_URL, ",".join(WORKER_ONLY)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert ran.returncode == 0, ran.stderr
    found = json.loads(ran.stdout)
    assert found["sent"] == "install-check-1"
    assert found["schema"]["code"] == "invalid_payload"
    assert found["schema"]["details"]["path"] == "/payload/to_number"
    assert found["check"]["code"] == "invalid_payload", "the command's own check ran in the publisher"
    assert "not a valid phone number" in found["check"]["message"]
    assert found["loaded"] == []


def test_worker_packages_are_an_extra() -> None:
    """The base dependencies are the client's; the worker's server, stores, metrics and traces are the extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {canonicalize_name(Requirement(spec).name) for spec in project["dependencies"]}
    worker = {
        canonicalize_name(Requirement(spec).name) for spec in project["optional-dependencies"]["worker"]
    }
    for package in (
        "asyncpg",
        "redis",
        "prometheus-client",
        "opentelemetry-sdk",
        "pydantic-settings",
        "click",
    ):
        assert package in worker and package not in base, package
    assert {"kombu", "orjson", "jsonschema-rs", "phonenumbers"} <= base
