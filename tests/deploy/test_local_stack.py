"""The Compose stack's wiring, run without Docker: its worker settings, sandboxes and RabbitMQ users work together.

Docker cannot run here, so this starts what the compose file starts, as local
processes: the vendor sandboxes with the compose file's commands, and a worker
with the compose file's environment (host names pointed at 127.0.0.1), logged
in as the least-privileged worker user of definitions.json; a publisher with
the publisher user's rights then gets its answers.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from handlers import build_registry
from tests.deploy import DEPLOY
from tests.deploy.broker import Imported
from tests.support.worker import SWITCHBOARD, WorkerProcess, free_port
from worker.client import Switchboard

registry = build_registry()

# PyYAML is a dev dependency; without it these checks cannot run at all.
yaml = pytest.importorskip("yaml", reason="pip install pyyaml")

pytestmark = pytest.mark.integration

SERVICES = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"sandbox exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


@pytest.fixture(scope="module")
def sandboxes() -> Iterator[dict[str, int]]:
    """Each vendor sandbox, started with the compose file's command on a free local port."""
    ports: dict[str, int] = {}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for vendor in registry.vendors:
            command = list(SERVICES[f"{vendor}-sandbox"]["command"])
            port = free_port()
            command[command.index("--port") + 1] = str(port)
            command[command.index("--host") + 1] = "127.0.0.1"
            process = subprocess.Popen([str(SWITCHBOARD), *command], stdout=subprocess.DEVNULL)
            processes.append(process)
            _wait_for_port(port, process)
            ports[vendor] = port
        yield ports
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def _local(url: str, netloc: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(scope="module")
def worker(imported: Imported, sandboxes: dict[str, int]) -> Iterator[WorkerProcess]:
    """A worker with worker-1's compose environment, pointed at local processes."""
    env = {key: str(value) for key, value in SERVICES["worker-1"]["environment"].items()}
    env["SWITCHBOARD_AMQP_URL"] = imported.url("switchboard-worker")
    store = urlsplit(env["SWITCHBOARD_STORE_URL"])
    try:
        socket.create_connection(("127.0.0.1", store.port or 6379), timeout=2).close()
    except OSError:
        pytest.skip(f"no Redis on 127.0.0.1:{store.port} for the compose file's store URL")
    env["SWITCHBOARD_STORE_URL"] = _local(env["SWITCHBOARD_STORE_URL"], f"127.0.0.1:{store.port}")
    for vendor, port in sandboxes.items():
        key = f"SWITCHBOARD_{vendor.upper()}_BASE_URL"
        env[key] = _local(env[key], f"127.0.0.1:{port}")
    with WorkerProcess(env, ready_timeout=60) as process:
        yield process


def test_pidj_text_goes_through(imported: Imported, worker: WorkerProcess) -> None:
    """send_text published as switchboard-publisher succeeds through the worker and the Pidj sandbox."""
    example = registry.commands["send_text"].example
    with Switchboard(imported.url("switchboard-publisher")) as sb:
        event = sb.call("send_text", example, id=f"stack-{uuid.uuid4()}", timeout=60)
    assert event["status"] == "succeeded", event
    assert worker.metric("switchboard_commands_finished_total", type="send_text", status="succeeded") >= 1


def test_peerly_credentials_are_accepted(imported: Imported, worker: WorkerProcess) -> None:
    """A Peerly command reaches the Peerly sandbox with the compose credentials (no auth failure)."""
    example = registry.commands["check_list_status"].example
    with Switchboard(imported.url("switchboard-publisher")) as sb:
        event = sb.call("check_list_status", example, id=f"stack-{uuid.uuid4()}", timeout=60)
    assert event["status"] in ("succeeded", "failed"), event
    assert (event.get("error") or {}).get("code") != "vendor_auth_failed", event


def test_worker_drains_and_exits_zero_on_sigterm(worker: WorkerProcess) -> None:
    """SIGTERM ends the worker with exit code 0 within the compose stop_grace_period."""
    grace = float(SERVICES["worker-1"]["stop_grace_period"].rstrip("s"))
    assert worker.terminate(timeout=grace) == 0
