"""worker.amqp_tuning's frame reader: the frames pika's own reader hands on, in the same order."""

from __future__ import annotations

import random
from typing import Any

import pika
import pytest
from pika import frame, spec
from pika.exceptions import InvalidFrameError

from worker import amqp_tuning


class _Reader:
    """A connection's frame reading alone (pika's own helpers): what it hands on is recorded."""

    _read_frame = pika.connection.Connection._read_frame
    _trim_frame_buffer = pika.connection.Connection._trim_frame_buffer

    def __init__(self, on_data: Any, reset_on: bytes | None = None) -> None:  # no pika __init__: no I/O
        self._on_data = on_data
        self._frame_buffer = b""
        self.bytes_received = 0
        self.frames: list[bytes] = []
        self.reset_on = reset_on

    def feed(self, data: bytes) -> None:
        self._on_data(self, data)

    def _process_frame(self, frame_value: Any) -> None:
        marshaled = b"AMQP" if isinstance(frame_value, frame.ProtocolHeader) else frame_value.marshal()
        self.frames.append(marshaled)
        if self.reset_on is not None and marshaled == self.reset_on:
            self._frame_buffer = b""  # as pika's _init_connection_state does when the connection resets


def _stream(deliveries: int) -> tuple[bytes, list[bytes]]:
    frames: list[bytes] = []
    for tag in range(1, deliveries + 1):
        body = b'{"id": "c-%d", "payload": {"text": "%s"}}' % (tag, b"x" * (tag * 37 % 300))
        properties = pika.BasicProperties(content_type="application/json", headers={"n": tag, "s": "é"})
        frames += [
            frame.Method(
                1, spec.Basic.Deliver("ctag", tag, False, "switchboard.commands", "send_text")
            ).marshal(),
            frame.Header(1, len(body), properties).marshal(),
            frame.Body(1, body).marshal(),
            frame.Method(2, spec.Basic.Ack(tag, multiple=tag % 5 == 0)).marshal(),
        ]
        if tag % 17 == 0:
            frames.append(frame.Heartbeat().marshal())
    return b"".join(frames), frames


def _read(on_data: Any, stream: bytes, cuts: list[int], reset_on: bytes | None = None) -> _Reader:
    reader = _Reader(on_data, reset_on)
    start = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[start:cut])
        start = cut
    return reader


@pytest.mark.parametrize("seed", range(20))
def test_any_split_of_the_stream_gives_the_frames_pikas_reader_gives(seed: int) -> None:
    stream, frames = _stream(200)
    rng = random.Random(seed)
    # Reads of every size: a byte, a frame's header cut in two, whole 64 KiB reads.
    size = rng.choice([1, 3, 7, 50, 4096, 65536])
    cuts = sorted({rng.randrange(1, len(stream)) for _ in range(len(stream) // max(size, 1) + 1)})
    ours = _read(amqp_tuning._on_data_available_in_place, stream, cuts)
    theirs = _read(amqp_tuning.PIKA_ON_DATA_AVAILABLE, stream, cuts)
    assert ours.frames == theirs.frames == frames
    assert ours.bytes_received == theirs.bytes_received == len(stream)
    assert ours._frame_buffer == theirs._frame_buffer == b""


def test_a_partial_frame_waits_for_the_next_read() -> None:
    stream, frames = _stream(3)
    ours = _read(amqp_tuning._on_data_available_in_place, stream[:-5], [])
    assert ours.frames == frames[:-1]
    assert ours._frame_buffer == frames[-1][:-5]
    ours.feed(stream[-5:])
    assert ours.frames == frames and ours._frame_buffer == b""


def test_the_protocol_header_is_read_as_pika_reads_it() -> None:
    stream = b"AMQP\x00\x00\x09\x01" + _stream(1)[0]
    ours = _read(amqp_tuning._on_data_available_in_place, stream, [3, 9])
    theirs = _read(amqp_tuning.PIKA_ON_DATA_AVAILABLE, stream, [3, 9])
    assert ours.frames == theirs.frames and ours.frames[0] == b"AMQP"


def test_a_reset_while_reading_drops_the_rest_of_the_read_as_pika_does() -> None:
    stream, frames = _stream(4)
    ours = _read(amqp_tuning._on_data_available_in_place, stream, [], reset_on=frames[5])
    theirs = _read(amqp_tuning.PIKA_ON_DATA_AVAILABLE, stream, [], reset_on=frames[5])
    assert ours.frames == theirs.frames == frames[:6]
    assert ours._frame_buffer == theirs._frame_buffer == b""


def test_a_bad_frame_end_is_refused_as_pika_refuses_it() -> None:
    _, frames = _stream(2)
    broken = frames[0] + frames[1][:-1] + b"\x00" + b"".join(frames[2:])
    for on_data in (amqp_tuning._on_data_available_in_place, amqp_tuning.PIKA_ON_DATA_AVAILABLE):
        reader = _Reader(on_data)
        with pytest.raises(InvalidFrameError):
            reader.feed(broken)
        assert reader.frames == frames[:1]


def test_the_worker_reads_frames_in_place() -> None:
    import worker.amqp  # noqa: F401  # applies the tuning

    assert pika.connection.Connection._on_data_available is amqp_tuning._on_data_available_in_place
