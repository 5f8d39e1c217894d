"""Two changes to pika's asyncio transport, measured with ``make bench``.

pika's plaintext transport sends every buffered frame with its own
``send()`` (a publish is three frames, an ack one more) and reads the socket
4 KiB at a time. At a few thousand commands a second those syscalls were the
largest single cost in the worker's profile. Here queued frames are joined
into one ``send()`` (up to 256 KiB), and reads take up to 64 KiB. Frames and
their order are unchanged; only how many syscalls carry them.

Applied once, at import of :mod:`worker.amqp`; the SSL transport has its own
``_produce`` and is left alone.
"""

from __future__ import annotations

from typing import Any

from pika.adapters.utils import io_services_utils

MAX_SEND_BYTES = 256 * 1024
MAX_RECV_BYTES = 64 * 1024

_Base: Any = io_services_utils._AsyncTransportBase


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


def apply() -> None:
    if getattr(_Base, "_switchboard_tuned", False):
        return
    _Base._produce = _produce_coalesced
    _Base._MAX_RECV_BYTES = MAX_RECV_BYTES
    _Base._switchboard_tuned = True
