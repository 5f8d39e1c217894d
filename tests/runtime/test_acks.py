"""Acks sent in batches (multiple=True where the order allows) settle exactly the deliveries acked, on the real broker."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pika
import pytest

from tests.support.amqp import AMQP_URL
from worker.amqp import Channel, Connection, PublishReturned

pytestmark = pytest.mark.integration

COUNT = 40


async def _consume(channel: Channel, queue: str) -> list[int]:
    """Consume ``COUNT`` messages; their delivery tags."""
    tags: list[int] = []
    all_in = asyncio.get_running_loop().create_future()

    def on_message(_ch: Any, method: Any, _properties: Any, _body: bytes) -> None:
        tags.append(method.delivery_tag)
        if len(tags) == COUNT and not all_in.done():
            all_in.set_result(None)

    await channel.qos(COUNT)
    await channel.consume(queue, on_message)
    await asyncio.wait_for(all_in, 10)
    return tags


async def _until(condition: Any, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _queue_and_watched_channel(
    connection: Connection,
) -> tuple[Channel, str, Channel, list[tuple[int, bool]]]:
    """A queue holding ``COUNT`` messages (and the channel that made it), and a channel whose acks are recorded."""
    setup = await connection.channel()
    queue = f"test.acks.{uuid.uuid4().hex[:8]}"
    await setup.queue_declare(queue, durable=False, auto_delete=False)
    for index in range(COUNT):
        setup.publish("", queue, str(index).encode(), pika.BasicProperties())
    channel = await connection.channel()
    sent: list[tuple[int, bool]] = []
    raw_ack = channel.raw.basic_ack

    def spy(delivery_tag: int = 0, multiple: bool = False) -> None:
        sent.append((delivery_tag, multiple))
        raw_ack(delivery_tag, multiple)

    channel.raw.basic_ack = spy  # type: ignore[method-assign]
    return setup, queue, channel, sent


async def test_batched_acks_settle_exactly_the_acked_deliveries(topology_declared: None) -> None:
    """Acked out of order over several loop turns, one left unacked: only that one is still held."""
    connection = await Connection.connect(AMQP_URL, name="switchboard-test-acks")
    try:
        setup, queue, channel, sent = await _queue_and_watched_channel(connection)
        tags = await _consume(channel, queue)
        held = tags[COUNT // 2]  # never acked: a multiple ack must not take it along
        to_ack = [tag for tag in tags if tag != held]
        random.Random(7).shuffle(to_ack)
        for start in range(0, len(to_ack), 7):  # a few acks per loop turn, as confirms arrive
            for tag in to_ack[start : start + 7]:
                assert channel.ack(tag)
            await asyncio.sleep(0)  # the turn ends: its acks go out
        await asyncio.sleep(0)

        assert any(multiple for _, multiple in sent), "no multiple ack was sent"
        assert len(sent) < len(to_ack)
        covered: set[int] = set()
        for tag, multiple in sent:
            covered |= {t for t in tags if t <= tag and t not in covered} if multiple else {tag}
        assert covered == set(to_ack)

        # The broker handles a channel's frames in order: once it closed the channel, it had
        # settled every ack sent before, and gave back what was still unacked.
        await channel.close()
        await _until(lambda: channel.closed_reason is not None)
        state = await setup.queue_declare(queue, passive=True)
        assert state.method.message_count == 1  # only the one never acked came back
        setup.raw.queue_delete(queue)
    finally:
        await connection.close()


async def test_an_ack_asked_for_by_a_confirm_leaves_with_that_confirm(topology_declared: None) -> None:
    """``then`` of a publish acks a delivery as the confirm is handled: the ack is on the wire before the
    task awaiting the publish wakes. A publish the broker returns never calls it: that delivery stays held."""
    connection = await Connection.connect(AMQP_URL, name="switchboard-test-ack-on-confirm")
    try:
        setup, queue, consume, sent = await _queue_and_watched_channel(connection)
        tags = await _consume(consume, queue)
        publish = await connection.channel()
        await publish.enable_confirms()

        confirmed = publish.publish(
            "", queue, b"event", pika.BasicProperties(), then=lambda: consume.ack(tags[0])
        )
        await confirmed
        assert [tag for tag, _ in sent] == [tags[0]], "the ack did not leave with the confirm"

        returned = publish.publish(
            "",
            f"no.such.queue.{uuid.uuid4().hex[:8]}",
            b"event",
            pika.BasicProperties(),
            mandatory=True,
            then=lambda: consume.ack(tags[1]),
        )
        with pytest.raises(PublishReturned):
            await returned
        await asyncio.sleep(0)
        assert [tag for tag, _ in sent] == [tags[0]], "a returned publish acked its delivery"

        await consume.close()
        await _until(lambda: consume.closed_reason is not None)
        state = await setup.queue_declare(queue, passive=True)
        # Given back: every delivery but the acked one, and the event published to the queue.
        assert state.method.message_count == COUNT
        setup.raw.queue_delete(queue)
    finally:
        await connection.close()
