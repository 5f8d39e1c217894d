"""RabbitMQ 3.10 through 4.x, on this machine's broker (3.10): dead letters survive being read,
and a queue declared before with other arguments is used with a clear warning, not a crash."""

from __future__ import annotations

import os
import subprocess

import pika
import pytest
from click.testing import CliRunner

from tests.support.amqp import AMQP_URL, connect, queue_depth
from tests.support.worker import SWITCHBOARD
from worker import topology
from worker.cli import main

pytestmark = pytest.mark.integration


def _dead_letter(message_id: str) -> None:
    connection = connect()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            topology.DEAD_LETTER_EXCHANGE,
            "send_text",
            b'{"id": "x", "type": "send_text", "payload": {}}',
            pika.BasicProperties(delivery_mode=2, message_id=message_id),
        )
    finally:
        connection.close()


def test_reading_dead_letters_never_drops_them(broker: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """25 `dlq list` reads (more than 4.x's default delivery limit of 20) leave the dead letter there."""
    monkeypatch.setenv("SWITCHBOARD_AMQP_URL", AMQP_URL)
    _dead_letter("dead-read-25")
    runner = CliRunner()
    for _ in range(25):
        result = runner.invoke(main, ["dlq", "list", "--json"])
        assert result.exit_code == 0, result.output
        assert "dead-read-25" in result.output
    assert queue_depth(topology.DEAD_QUEUE) == 1


def test_a_queue_declared_with_old_arguments_is_kept_with_a_warning(broker: None) -> None:
    """switchboard.dead declared by an older version: declare warns and names the fix; it does not fail."""
    connection = connect()
    try:
        channel = connection.channel()
        channel.queue_delete(topology.DEAD_QUEUE)
        channel.queue_declare(topology.DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    finally:
        connection.close()
    env = {**os.environ, "SWITCHBOARD_AMQP_URL": AMQP_URL}
    try:
        result = subprocess.run(
            [str(SWITCHBOARD), "topology", "declare"], capture_output=True, text=True, timeout=60, env=env
        )
        assert result.returncode == 0, result.stderr
        assert "switchboard.dead already exists with other arguments" in result.stderr
        assert "x-quorum-initial-group-size" in result.stderr
        assert "guest:guest" not in result.stderr
    finally:
        connection = connect()
        try:
            connection.channel().queue_delete(topology.DEAD_QUEUE)
        finally:
            connection.close()
        subprocess.run([str(SWITCHBOARD), "topology", "declare"], check=True, timeout=60, env=env)
