"""deploy/rabbitmq/definitions.json: one vhost, and users that can do their job and nothing more."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pika
import pika.exceptions
import pytest

from handlers import build_registry
from tests.client.broker_fakes import Responder, terminal
from tests.deploy import DEPLOY
from tests.deploy.broker import DEV_PASSWORDS, Imported, declare_topology, definitions, rabbitmqctl
from worker import topology
from worker.client import Switchboard

registry = build_registry()

PUBLISHING_DOC = DEPLOY.parent / "docs" / "publishing.md"
DOC_URL = "amqp://switchboard-publisher:publisher-dev-password@localhost:5672/switchboard"
VHOST = "switchboard"
TOPOLOGY = topology.build({vendor: registry.types_of(vendor) for vendor in registry.vendors})
TOPOLOGY_NAMES = [e.name for e in TOPOLOGY.exchanges] + [q.name for q in TOPOLOGY.queues]


def _permissions(user: str) -> dict[str, str]:
    found = [p for p in definitions()["permissions"] if p["user"] == user and p["vhost"] == VHOST]
    assert len(found) == 1, f"{user} needs exactly one permission entry on {VHOST}"
    return {k: found[0][k] for k in ("configure", "write", "read")}


def _allows(pattern: str, name: str) -> bool:
    """RabbitMQ's rule: a permission regex allows a resource if it matches (anywhere, like re.search)."""
    return re.search(pattern, name) is not None


class TestStatically:
    def test_has_the_vhost_and_the_users(self) -> None:
        """The file creates the switchboard vhost and a worker, a publisher, a scaler and an admin user."""
        loaded = definitions()
        assert [v["name"] for v in loaded["vhosts"]] == [VHOST]
        assert {u["name"] for u in loaded["users"]} == set(DEV_PASSWORDS)

    def test_worker_may_touch_every_topology_name(self) -> None:
        """The worker can declare, publish to and read every switchboard.* name, and reply via amq.default."""
        worker = _permissions("switchboard-worker")
        for name in TOPOLOGY_NAMES:
            for kind in ("configure", "write", "read"):
                assert _allows(worker[kind], name), f"worker cannot {kind} {name}"
        assert _allows(worker["write"], "amq.default"), "worker cannot publish replies to reply_to"
        assert not _allows(worker["configure"], "amq.gen-abc") and not _allows(worker["read"], "other.queue")

    def test_publisher_may_only_publish_commands(self) -> None:
        """The publisher writes only to switchboard.commands and configures/reads only its own amq.gen- queues."""
        publisher = _permissions("switchboard-publisher")
        assert _allows(publisher["write"], topology.COMMANDS_EXCHANGE)
        for name in [*TOPOLOGY_NAMES, "amq.default"]:
            if name != topology.COMMANDS_EXCHANGE:
                assert not _allows(publisher["write"], name), f"publisher may write {name}"
            assert not _allows(publisher["configure"], name), f"publisher may configure {name}"
            assert not _allows(publisher["read"], name), f"publisher may read {name}"
        assert _allows(publisher["configure"], "amq.gen-Jx3") and _allows(publisher["read"], "amq.gen-Jx3")

    def test_scaler_has_monitoring_tag_and_no_resource_rights(self) -> None:
        """KEDA's user only reads queue lengths over the management API: no configure/write/read."""
        users = {u["name"]: u for u in definitions()["users"]}
        assert users["switchboard-scaler"]["tags"] == ["monitoring"]
        assert _permissions("switchboard-scaler") == {"configure": "^$", "write": "^$", "read": "^$"}


# -- against the real broker ----------------------------------------------------


def _declare_topology(channel: Any) -> None:
    declare_topology(channel, {vendor: registry.types_of(vendor) for vendor in registry.vendors})


def _refused(url: str, action: Any) -> bool:
    """Whether the broker answers ``action(channel)`` with ACCESS_REFUSED (403)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        action(channel)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return bool(exc.reply_code == 403)
    finally:
        if connection.is_open:
            connection.close()
    return False


@pytest.mark.integration
class TestOnTheBroker:
    def test_dev_passwords_match_the_hashes(self, imported: Imported) -> None:
        """Each documented local-development password authenticates its user."""
        for user, password in DEV_PASSWORDS.items():
            assert (
                rabbitmqctl("authenticate_user", imported.prefix + user, password, check=False).returncode
                == 0
            )

    def test_worker_can_declare_and_use_the_topology(self, imported: Imported) -> None:
        """With its permissions the worker declares everything, publishes events and reads its queues."""
        connection = pika.BlockingConnection(pika.URLParameters(imported.url("switchboard-worker")))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            _declare_topology(channel)
            channel.basic_publish(topology.EVENTS_EXCHANGE, "send_text.succeeded", b"{}")
            channel.basic_publish(topology.COMMANDS_EXCHANGE, "send_text", b"{}")
            assert channel.basic_get("switchboard.pidj", auto_ack=True)[0] is not None
        finally:
            connection.close()

    def test_publisher_can_send_and_call_but_nothing_else(self, imported: Imported) -> None:
        """The publisher's client sends and calls; the broker refuses it events, vendor queues and declares."""
        worker_url = imported.url("switchboard-worker")
        publisher_url = imported.url("switchboard-publisher")
        connection = pika.BlockingConnection(pika.URLParameters(worker_url))
        _declare_topology(connection.channel())
        connection.close()
        fake = Responder(
            worker_url,
            topology.COMMANDS_EXCHANGE,
            "list_groups",
            answer=lambda envelope, seen: [terminal(envelope)],
            queue="switchboard.pidj",
        )
        fake.start()
        try:
            with Switchboard(publisher_url) as sb:
                event = sb.call("list_groups", {}, id="least-privilege", timeout=15)
        finally:
            fake.stop()
        assert event["status"] == "succeeded"
        assert event["command_id"] == "least-privilege"

        # A type no vendor queue binds goes to the alternate exchange: no extra right needed for that.
        assert not _refused(
            publisher_url, lambda ch: ch.basic_publish(topology.COMMANDS_EXCHANGE, "no_such", b"{}")
        )
        assert _refused(
            publisher_url, lambda ch: ch.basic_publish(topology.EVENTS_EXCHANGE, "x.succeeded", b"{}")
        )
        assert _refused(publisher_url, lambda ch: ch.basic_publish("", "switchboard.pidj", b"{}"))
        assert _refused(publisher_url, lambda ch: ch.basic_get("switchboard.pidj"))
        assert _refused(publisher_url, lambda ch: ch.queue_declare("switchboard.mine"))

    def test_scaler_can_read_nothing_over_amqp(self, imported: Imported) -> None:
        """KEDA's user cannot consume or publish over AMQP (it only reads the management API)."""
        scaler_url = imported.url("switchboard-scaler")
        connection = pika.BlockingConnection(pika.URLParameters(imported.url("switchboard-worker")))
        _declare_topology(connection.channel())
        connection.close()
        assert _refused(scaler_url, lambda ch: ch.basic_get("switchboard.pidj"))
        assert _refused(
            scaler_url, lambda ch: ch.basic_publish(topology.COMMANDS_EXCHANGE, "send_text", b"{}")
        )

    def test_publishing_doc_examples_run_as_the_publisher(self, imported: Imported) -> None:
        """Each Python example of docs/publishing.md runs with the publisher's rights and gets its answer."""
        blocks = re.findall(r"```python\n(.*?)```", PUBLISHING_DOC.read_text(), flags=re.DOTALL)
        assert len(blocks) >= 2 and all(DOC_URL in block for block in blocks)
        worker_url = imported.url("switchboard-worker")
        publisher_url = imported.url("switchboard-publisher")
        connection = pika.BlockingConnection(pika.URLParameters(worker_url))
        _declare_topology(connection.channel())
        connection.close()
        fake = Responder(
            worker_url,
            topology.COMMANDS_EXCHANGE,
            "send_text",
            answer=lambda envelope, seen: [terminal(envelope)],
            queue="switchboard.pidj",
        )
        fake.start()
        try:
            for block in blocks:
                done = subprocess.run(
                    [sys.executable, "-c", block.replace(DOC_URL, publisher_url)],
                    capture_output=True,
                    text=True,
                    timeout=90,
                    env={**os.environ, "AMQP_URL": publisher_url},
                )
                assert done.returncode == 0, done.stderr
                assert done.stdout.startswith("succeeded"), done.stdout
        finally:
            fake.stop()
