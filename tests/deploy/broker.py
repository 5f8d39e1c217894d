"""definitions.json on the real broker, under unique names: a throwaway vhost and users."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tests.client.broker_fakes import AMQP_URL, reachable
from tests.deploy import DEPLOY
from worker import topology

DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
# The local-development passwords behind the hashes in definitions.json (docs/runbook.md lists them too).
DEV_PASSWORDS = {
    "admin": "admin-dev-password",
    "switchboard-worker": "worker-dev-password",
    "switchboard-publisher": "publisher-dev-password",
    "switchboard-scaler": "scaler-dev-password",
}


def definitions() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DEFINITIONS.read_text())
    return loaded


def rabbitmqctl(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("rabbitmqctl")
    assert binary is not None
    return subprocess.run(
        [binary, "-q", *args], check=check, capture_output=True, text=True, timeout=60, input=stdin
    )


def rabbitmqctl_usable() -> bool:
    if shutil.which("rabbitmqctl") is None or not reachable(AMQP_URL):
        return False
    try:
        return rabbitmqctl("list_vhosts", check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@dataclass
class Imported:
    """definitions.json imported under unique names, so it never collides with a real setup."""

    vhost: str
    prefix: str

    def url(self, user: str, host: str = "127.0.0.1:5672") -> str:
        return f"amqp://{self.prefix}{user}:{DEV_PASSWORDS[user]}@{host}/{quote(self.vhost, safe='')}"


@contextmanager
def imported_definitions() -> Iterator[Imported]:
    """Import definitions.json into a new vhost with prefixed user names; delete both afterwards."""
    tag = f"sbtest-{uuid.uuid4().hex[:8]}"
    target = Imported(vhost=tag, prefix=f"{tag}-")
    renamed = definitions()
    for vhost in renamed["vhosts"]:
        vhost["name"] = target.vhost
    for user in renamed["users"]:
        user["name"] = target.prefix + user["name"]
    for permission in renamed["permissions"]:
        permission["user"] = target.prefix + permission["user"]
        permission["vhost"] = target.vhost
    # On stdin: the node may run as another user that cannot read our temporary files.
    rabbitmqctl("import_definitions", "--format", "json", stdin=json.dumps(renamed))
    try:
        wait_for_permissions(target, expected=len(renamed["permissions"]))
        yield target
    finally:
        rabbitmqctl("delete_vhost", target.vhost, check=False)
        for user in DEV_PASSWORDS:
            rabbitmqctl("delete_user", target.prefix + user, check=False)


def wait_for_permissions(target: Imported, *, expected: int, timeout: float = 30.0) -> None:
    """import_definitions returns before the import is done: wait until every permission exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = rabbitmqctl("list_permissions", "-p", target.vhost, "--no-table-headers", check=False)
        if listed.returncode == 0 and len(listed.stdout.strip().splitlines()) >= expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"definitions were not imported into {target.vhost} within {timeout}s")


def declare_topology(channel: Any, vendor_types: dict[str, Iterable[str]]) -> None:
    """Declare the worker's topology with a pika channel, exactly as worker/topology.py builds it."""
    built = topology.build(vendor_types)
    for exchange in built.exchanges:
        channel.exchange_declare(
            exchange.name, exchange.kind, durable=True, arguments=exchange.arguments or None
        )
    for queue in built.queues:
        channel.queue_declare(queue.name, durable=True, arguments=queue.arguments or None)
        for exchange_name, routing_key, arguments in queue.bindings:
            channel.queue_bind(queue.name, exchange_name, routing_key, arguments)
