"""Acks asked for by a confirm (``then=`` of Channel.publish) leave in the same call, without a broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pika
import pika.frame
import pika.spec

from worker.amqp import Channel


class RawChannel:
    """What Channel uses of pika's channel: the frames it would send are recorded."""

    is_open = True

    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []
        self.published = 0

    def add_on_close_callback(self, callback: Any) -> None:
        pass

    def add_on_return_callback(self, callback: Any) -> None:
        pass

    def basic_publish(self, *args: Any, **kwargs: Any) -> None:
        self.published += 1

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))


def _channel() -> tuple[Channel, RawChannel]:
    raw = RawChannel()
    channel = Channel(raw)  # type: ignore[arg-type]
    channel._confirming = True  # as after enable_confirms
    for tag in (1, 2, 3):
        channel._unacked[tag] = False  # as consume records each delivery
    return channel, raw


def _confirm(channel: Channel, tag: int, *, multiple: bool, nack: bool = False) -> None:
    method = pika.spec.Basic.Nack if nack else pika.spec.Basic.Ack
    channel._on_confirm(pika.frame.Method(1, method(delivery_tag=tag, multiple=multiple)))


async def test_the_acks_of_one_confirm_frame_leave_with_it_as_one_multiple_ack() -> None:
    channel, raw = _channel()
    futures = [
        channel.publish("", "q", b"event", pika.BasicProperties(), then=lambda tag=tag: channel.ack(tag))
        for tag in (1, 2)
    ]
    _confirm(channel, 2, multiple=True)
    assert raw.acks == [(2, True)]  # before any loop turn: no task woke, nothing scheduled ran
    assert all(future.done() for future in futures)
    await asyncio.sleep(0)
    assert raw.acks == [(2, True)]  # the turn's end finds nothing more to send


async def test_a_nacked_publish_asks_for_no_ack() -> None:
    channel, raw = _channel()
    future = channel.publish("", "q", b"event", pika.BasicProperties(), then=lambda: channel.ack(1))
    _confirm(channel, 1, multiple=False, nack=True)
    assert future.exception() is not None
    await asyncio.sleep(0)
    assert raw.acks == []


async def test_a_failing_callback_leaves_the_rest_of_the_frame_settled() -> None:
    channel, raw = _channel()

    def broken() -> None:
        raise RuntimeError("a bug in a callback")

    first = channel.publish("", "q", b"event", pika.BasicProperties(), then=broken)
    second = channel.publish("", "q", b"event", pika.BasicProperties(), then=lambda: channel.ack(3))
    _confirm(channel, 2, multiple=True)
    assert first.done() and first.exception() is None
    assert second.done()
    assert raw.acks == [(3, False)]  # 1 and 2 were never acked: a multiple ack must not cover them
