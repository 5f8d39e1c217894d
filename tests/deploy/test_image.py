"""deploy/Dockerfile and its lock files: small, non-root, health-checked, pinned with hashes."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy import DEPLOY

ROOT = DEPLOY.parent
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.startswith("#")
]


def _final_stage() -> list[str]:
    starts = [i for i, line in enumerate(INSTRUCTIONS) if line.startswith("FROM ")]
    return INSTRUCTIONS[starts[-1] :]


def _lock(path: Path) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes)."""
    pins: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in path.read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", line)
        if pinned:
            current = str(canonicalize_name(pinned.group(1)))
            pins[current] = (Version(pinned.group(2)), 0)
        elif "--hash=sha256:" in line and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


class TestDockerfile:
    def test_is_multi_stage_and_the_runtime_stage_gets_only_the_venv(self) -> None:
        """A build stage and a runtime stage; the runtime copies just the virtualenv from the build."""
        assert len([i for i in INSTRUCTIONS if i.startswith("FROM ")]) >= 2
        copies = [i for i in _final_stage() if i.startswith("COPY")]
        assert copies and all(c.startswith("COPY --from=build /opt/switchboard ") for c in copies)

    def test_runs_switchboard_run_as_a_numeric_non_root_user(self) -> None:
        """USER is a non-zero uid (Kubernetes can verify runAsNonRoot), and the default command is `switchboard run`."""
        final = _final_stage()
        user = [i for i in final if i.startswith("USER ")][-1].split()[1].split(":")[0]
        assert user.isdigit() and int(user) != 0
        assert 'ENTRYPOINT ["switchboard"]' in final
        assert 'CMD ["run"]' in final

    def test_health_check_succeeds_only_when_healthz_answers(self) -> None:
        """The HEALTHCHECK command exits 0 when /healthz on SWITCHBOARD_METRICS_PORT answers 200, else not."""
        health = [i for i in _final_stage() if i.startswith("HEALTHCHECK")]
        assert len(health) == 1
        command: list[str] = json.loads(health[0].split(" CMD ", 1)[1])
        assert command[0] == "python"
        with _server(status=200) as port:
            assert _run_check(command, port) == 0
        with _server(status=503) as port:
            assert _run_check(command, port) != 0

    def test_installs_dependencies_from_the_locks_with_hashes(self) -> None:
        """Both lock files are installed with --require-hashes, before the sources are copied (layer caching)."""
        text = " ".join(INSTRUCTIONS)
        assert "--require-hashes --no-deps --only-binary=:all: -r /tmp/requirements.lock" in text
        assert "--require-hashes --no-deps -r /tmp/build.lock" in text
        assert text.index("requirements.lock") < text.index("COPY worker")

    def test_copied_sources_exist_and_are_not_ignored(self) -> None:
        """Every path the Dockerfile copies from the context exists and is let through by its .dockerignore."""
        ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
        for line in INSTRUCTIONS:
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    if "*" in source:
                        continue
                    assert (ROOT / source).exists(), source
                    assert f"!{source.rstrip('/')}" in ignore or f"!{source}" in ignore, (
                        f"{source} is ignored"
                    )


@contextmanager
def _server(status: int) -> Iterator[int]:
    """A local HTTP server answering ``status`` on /healthz (404 elsewhere)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_check(command: list[str], port: int) -> int:
    env = {**os.environ, "SWITCHBOARD_METRICS_PORT": str(port)}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


class TestLocks:
    def test_every_runtime_dependency_is_pinned_with_hashes(self) -> None:
        """Each [project].dependencies and `worker` extra entry is pinned in requirements.lock at a version
        it allows, with hashes (the image runs the worker)."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        pins = _lock(DEPLOY / "requirements.lock")
        for spec in [*project["dependencies"], *project["optional-dependencies"]["worker"]]:
            requirement = Requirement(spec)
            name = str(canonicalize_name(requirement.name))
            assert name in pins, f"{name} missing from requirements.lock: run deploy/lock.sh"
            version, _ = pins[name]
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{name}=={version} breaks {spec}"
            )
        assert all(hashes > 0 for _, hashes in pins.values()), "every pin needs --hash (deploy/lock.sh)"

    def test_build_backend_is_pinned(self) -> None:
        """build.lock pins every [build-system].requires entry, with hashes."""
        requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
        pins = _lock(DEPLOY / "build.lock")
        for spec in requires:
            requirement = Requirement(spec)
            version, hashes = pins[str(canonicalize_name(requirement.name))]
            assert requirement.specifier.contains(version) and hashes > 0
