"""Three changes to pika's asyncio transport and frame reader, measured with ``make bench``.

pika's plaintext transport sends every buffered frame with its own
``send()`` (a publish is three frames, an ack one more) and reads the socket
4 KiB at a time. At a few thousand commands a second those syscalls were the
largest single cost in the worker's profile. Here queued frames are joined
into one ``send()`` (up to 256 KiB), and reads take up to 64 KiB. Frames and
their order are unchanged; only how many syscalls carry them.

pika's ``Connection`` then cuts each frame off the front of what it read by
copying the rest of the buffer (``buffer[consumed:]``): a 64 KiB read of a few
hundred frames copied megabytes, about 5 % of the worker's instructions. Here a
read's frames are decoded in place, each by pika's own ``decode_frame`` on a slice
holding exactly that frame; what is left (a partial frame) is kept as pika keeps it.

Applied once, at import of :mod:`worker.amqp` (and by the bench's baseline); the SSL
transport has its own ``_produce`` and is left alone.
"""

from __future__ import annotations

import struct
from typing import Any

from pika import connection, frame
from pika.adapters.utils import io_services_utils

MAX_SEND_BYTES = 256 * 1024
MAX_RECV_BYTES = 64 * 1024

_Base: Any = io_services_utils._AsyncTransportBase
_Connection: Any = connection.Connection

PIKA_ON_DATA_AVAILABLE = _Connection._on_data_available
"""pika's own reader, kept for the tests that compare the two."""

_FRAME_HEADER = struct.Struct(">BHL")  # type, channel, payload size; then the payload and a frame-end octet


def _produce_coalesced(self: Any) -> None:
    buffers = self._tx_buffers
    while buffers:
        if len(buffers) > 1:
            chunks = []
            size = 0
            while buffers and size < MAX_SEND_BYTES:
                chunk = buffers.popleft()
                chunks.append(chunk)
                size += len(chunk)
            buffers.appendleft(b"".join(chunks))
        sent = self._sigint_safe_send(self._sock, buffers[0])
        chunk = buffers.popleft()
        if sent < len(chunk):
            buffers.appendleft(chunk[sent:])
        self._tx_buffered_byte_count -= sent


def _on_data_available_in_place(self: Any, data_in: bytes) -> None:
    """``Connection._on_data_available`` without copying the rest of the buffer after each frame."""
    buffer = self._frame_buffer + data_in if self._frame_buffer else data_in
    self._frame_buffer = buffer
    size = len(buffer)
    offset = 0
    try:
        while offset < size:
            if buffer.startswith(b"AMQP", offset):
                end = offset + 8  # a protocol header: "AMQP" and four octets
            elif size - offset < _FRAME_HEADER.size:
                break
            else:
                end = offset + _FRAME_HEADER.size + _FRAME_HEADER.unpack_from(buffer, offset)[2] + 1
            if end > size:
                break  # the rest of this frame comes with the next read
            consumed, frame_value = frame.decode_frame(buffer[offset:end])
            if not frame_value:
                break
            offset += consumed
            self.bytes_received += consumed
            self._process_frame(frame_value)
            if self._frame_buffer is not buffer:
                return  # the connection's state was reset by that frame: pika's loop would stop too
    finally:
        if self._frame_buffer is buffer:
            self._frame_buffer = buffer[offset:] if offset else buffer


def apply() -> None:
    if getattr(_Base, "_switchboard_tuned", False):
        return
    _Base._produce = _produce_coalesced
    _Base._MAX_RECV_BYTES = MAX_RECV_BYTES
    _Connection._on_data_available = _on_data_available_in_place
    _Base._switchboard_tuned = True
