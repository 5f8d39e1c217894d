"""The bench's commands: each its own recipient, a valid one, the same again for a replay."""

from __future__ import annotations

import orjson

from bench import amqp
from handlers.pidj.messages import check_send_text


def test_each_command_has_its_own_valid_recipient_and_a_replay_the_same() -> None:
    bodies = [orjson.loads(amqp.command_body(amqp.command_id("p", n), 1.0, n)) for n in range(2000)]
    recipients = [body["payload"]["to_number"] for body in bodies]
    assert len(set(recipients)) == len(recipients)
    for body in bodies[:200]:
        # As the worker checks it: valid, and already in E.164 form.
        assert check_send_text(body["payload"])["to_number"] == body["payload"]["to_number"]
    again = orjson.loads(amqp.command_body(amqp.command_id("p", 7), 2.0, 7))
    assert again["payload"] == bodies[7]["payload"]
