"""A thin awaitable layer over pika's asyncio adapter.

pika's ``AsyncioConnection`` is callback-based; the runtime wants ``await``.
This module turns each RPC (declare, bind, qos, consume, cancel) into a
future, and tracks publisher confirms by delivery tag so that
:meth:`Channel.publish` returns a future that resolves when the broker has
taken responsibility for the message (or raises when it has not).

Nothing here knows about commands, vendors or events.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pika
import pika.channel
import pika.frame
import pika.spec
import structlog
from pika.adapters.asyncio_connection import AsyncioConnection

from worker import amqp_tuning, brokers

amqp_tuning.apply()

log = structlog.get_logger("switchboard.amqp")

OnMessage = Callable[[pika.channel.Channel, pika.spec.Basic.Deliver, pika.spec.BasicProperties, bytes], None]

Confirmed = Callable[[], None]
"""Called, synchronously, when the broker confirms a publish (never when it nacks or returns it)."""


class AMQPError(Exception):
    """The broker connection or channel failed."""


class ConnectionLost(AMQPError):
    """The connection or channel closed while an operation was pending."""


class PublishNacked(AMQPError):
    """The broker refused responsibility for a published message."""


class PublishReturned(PublishNacked):
    """A mandatory message reached no queue: the broker confirmed it, but only to drop it."""


PUBLISH_TAG_HEADER = "x-switchboard-publish-tag"
"""Set on a mandatory publish, so a ``basic.return`` names the publish it belongs to."""


class Connection:
    """One AMQP connection; ``on_lost`` is called once if it closes unasked."""

    def __init__(self, raw: AsyncioConnection, url: str = "") -> None:
        self.raw = raw
        self.url = url
        """The broker URL this connection went to (one of a cluster's)."""
        self.on_lost: Callable[[BaseException], None] | None = None
        self._closing = False
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect_any(
        cls,
        setting: str,
        *,
        name: str = "switchboard",
        last: str | None = None,
        per_node_seconds: float = 10.0,
    ) -> Connection:
        """Connect to the first node that answers of ``SWITCHBOARD_AMQP_URL`` (one or a list).

        Nodes are tried in random order, ``last`` (the node just lost) last.
        Errors name each node by ``host:port`` only: the URL holds the password.
        """
        failures = []
        for url in brokers.connection_order(brokers.broker_urls(setting), last=last):
            try:
                return await asyncio.wait_for(cls.connect(url, name=name), per_node_seconds)
            except (TimeoutError, ConnectionLost, OSError) as exc:
                reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
                failures.append(f"{brokers.address(url)} ({reason})")
        raise ConnectionLost("no broker answered: " + ", ".join(failures))

    @classmethod
    async def connect(cls, url: str, *, name: str = "switchboard") -> Connection:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[AsyncioConnection] = loop.create_future()
        params = pika.URLParameters(url)
        params.client_properties = {"connection_name": name}
        holder: list[Connection] = []

        def on_open(conn: AsyncioConnection) -> None:
            if not opened.done():
                opened.set_result(conn)

        def on_open_error(conn: AsyncioConnection, err: BaseException | str) -> None:
            if not opened.done():
                opened.set_exception(ConnectionLost(f"cannot connect to broker: {err}"))

        def on_close(conn: AsyncioConnection, reason: BaseException) -> None:
            if holder:
                holder[0]._lost(reason)

        raw = AsyncioConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        try:
            await opened
        except BaseException:
            if not (raw.is_closed or raw.is_closing):
                with contextlib.suppress(Exception):
                    raw.close()
            raise
        connection = cls(raw, url)
        holder.append(connection)
        return connection

    def _lost(self, reason: BaseException) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        if not self._closing and self.on_lost is not None:
            self.on_lost(reason)

    @property
    def is_open(self) -> bool:
        return bool(self.raw.is_open)

    @property
    def address(self) -> str:
        return brokers.address(self.url) if self.url else "?"

    @property
    def server_version(self) -> str:
        """The broker's version from its connection.start (``"3.10.8"``, ``"4.1.0"``)."""
        properties: dict[str, Any] = getattr(self.raw, "server_properties", None) or {}
        version = properties.get("version", b"")
        return version.decode() if isinstance(version, bytes) else str(version)

    async def channel(self) -> Channel:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[pika.channel.Channel] = loop.create_future()

        def on_open(channel: pika.channel.Channel) -> None:
            if not opened.done():
                opened.set_result(channel)

        self.raw.channel(on_open_callback=on_open)
        return Channel(await asyncio.wait_for(opened, 30))

    async def close(self) -> None:
        self._closing = True
        if self.raw.is_open:
            self.raw.close()
        if not self._closed.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closed), 10)


_owing_acks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[Channel]] = weakref.WeakKeyDictionary()
"""Per event loop, its channels with acks due: sent at the end of the confirm frame being handled
(or of the loop turn)."""


class Channel:
    """A channel with awaitable RPCs and publisher confirms."""

    def __init__(self, raw: pika.channel.Channel) -> None:
        self.raw = raw
        self._loop = asyncio.get_running_loop()
        self._pending: OrderedDict[int, asyncio.Future[None]] = OrderedDict()
        self._then: dict[int, Confirmed] = {}
        self._next_tag = 0
        self._confirming = False
        self._rpcs: set[asyncio.Future[Any]] = set()
        self.closed_reason: BaseException | None = None
        self._returned: set[int] = set()
        # Deliveries on this channel not acked or nacked yet, in delivery order, with whether an
        # ack is due (see ack); acks due are sent once per loop turn, as few frames as possible.
        self._unacked: OrderedDict[int, bool] = OrderedDict()
        self._acks_due: list[int] = []
        self._acks_scheduled = False
        self._owing = _owing_acks.setdefault(self._loop, set())
        raw.add_on_close_callback(self._on_close)
        raw.add_on_return_callback(self._on_return)

    # -- RPCs -------------------------------------------------------------
    def _rpc(self) -> tuple[asyncio.Future[Any], Callable[[Any], None]]:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._rpcs.add(future)

        def done(frame: Any) -> None:
            self._rpcs.discard(future)
            if not future.done():
                future.set_result(frame)

        return future, done

    async def _wait(self, future: asyncio.Future[Any]) -> Any:
        if self.closed_reason is not None:
            raise ConnectionLost(str(self.closed_reason))
        return await future

    async def exchange_declare(
        self, name: str, kind: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> None:
        future, done = self._rpc()
        self.raw.exchange_declare(name, kind, durable=durable, arguments=arguments, callback=done)
        await self._wait(future)

    async def queue_declare(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> pika.frame.Method:
        future, done = self._rpc()
        self.raw.queue_declare(
            name,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
            callback=done,
        )
        frame: pika.frame.Method = await self._wait(future)
        return frame

    async def queue_bind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: dict[str, Any] | None = None
    ) -> None:
        future, done = self._rpc()
        self.raw.queue_bind(queue, exchange, routing_key=routing_key, arguments=arguments, callback=done)
        await self._wait(future)

    async def qos(self, prefetch_count: int) -> None:
        future, done = self._rpc()
        self.raw.basic_qos(prefetch_count=prefetch_count, callback=done)
        await self._wait(future)

    async def consume(self, queue: str, on_message: OnMessage) -> str:
        unacked = self._unacked

        def delivered(
            channel: pika.channel.Channel,
            method: pika.spec.Basic.Deliver,
            properties: pika.spec.BasicProperties,
            body: bytes,
        ) -> None:
            unacked[method.delivery_tag] = False
            on_message(channel, method, properties, body)

        future, done = self._rpc()
        tag: str = self.raw.basic_consume(queue, delivered, auto_ack=False, callback=done)
        await self._wait(future)
        return tag

    async def cancel(self, consumer_tag: str) -> None:
        if not self.raw.is_open:
            return
        future, done = self._rpc()
        self.raw.basic_cancel(consumer_tag, callback=done)
        await self._wait(future)

    def ack(self, delivery_tag: int) -> bool:
        """Ack if the channel that delivered the message is still open.

        The ack leaves at the end of this loop turn, with the others due by then,
        or sooner: acks asked for while the broker's confirms are handled (see
        :meth:`publish`'s ``then``) leave at the end of that confirm frame. Due
        acks go out as the longest run of them at the front of the unacked
        deliveries as one ``basic.ack(multiple=True)``, the rest one by one.
        Confirms arrive in batches (``multiple``), so most acks share a frame,
        and the broker settles them in one go. Never a tag that is not due: a
        multiple ack covers only deliveries this channel was told to ack.
        """
        if not self.raw.is_open:
            return False
        if delivery_tag not in self._unacked:
            self.raw.basic_ack(delivery_tag)  # not from consume (basic.get): nothing to batch with
            return True
        self._unacked[delivery_tag] = True
        if not self._acks_due:
            self._owing.add(self)
            if not self._acks_scheduled:
                self._acks_scheduled = True
                self._loop.call_soon(self._send_acks_at_turn_end)
        self._acks_due.append(delivery_tag)
        return True

    def _send_acks_at_turn_end(self) -> None:
        self._acks_scheduled = False
        self.send_acks()

    def send_acks(self) -> None:
        """Send the acks due now."""
        self._owing.discard(self)
        due, self._acks_due = self._acks_due, []
        if not due or not self.raw.is_open:
            return
        unacked = self._unacked
        last = 0
        while unacked:
            tag, ack = next(iter(unacked.items()))
            if not ack:
                break
            unacked.popitem(last=False)
            last = tag
        if last:
            self.raw.basic_ack(last, multiple=True)
        for tag in due:
            if tag > last and unacked.pop(tag, None) is not None:
                self.raw.basic_ack(tag)

    def nack(self, delivery_tag: int, *, requeue: bool) -> bool:
        if not self.raw.is_open:
            return False
        self._unacked.pop(delivery_tag, None)
        self.raw.basic_nack(delivery_tag, requeue=requeue)
        return True

    async def close(self) -> None:
        if self.raw.is_open:
            self.raw.close()

    # -- publishing with confirms -------------------------------------------
    async def enable_confirms(self) -> None:
        future, done = self._rpc()
        self.raw.confirm_delivery(self._on_confirm, callback=done)
        await self._wait(future)
        self._confirming = True

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        *,
        mandatory: bool = False,
        then: Confirmed | None = None,
    ) -> asyncio.Future[None]:
        """Publish; the future resolves when the broker confirms it.

        ``mandatory``: fail with :class:`PublishReturned` when no queue took it.
        ``then``: called as the confirm is handled, a loop turn before a task
        awaiting the future wakes (an ack it asks for leaves with that confirm
        frame); not called when the publish fails.
        """
        future: asyncio.Future[None] = self._loop.create_future()
        if self.closed_reason is not None or not self.raw.is_open:
            future.set_exception(ConnectionLost("channel is closed"))
            return future
        if mandatory and self._confirming:
            # A confirm alone does not say a message reached a queue (an unroutable one is
            # confirmed and dropped); its basic.return, sent before the confirm, does.
            properties.headers = {**(properties.headers or {}), PUBLISH_TAG_HEADER: self._next_tag + 1}
        self.raw.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        if self._confirming:
            self._next_tag += 1
            self._pending[self._next_tag] = future
            if then is not None:
                self._then[self._next_tag] = then
        else:
            future.set_result(None)
            if then is not None:
                then()
        return future

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        tag: int = method.delivery_tag
        nacked = isinstance(method, pika.spec.Basic.Nack)
        if method.multiple:
            while self._pending:
                first = next(iter(self._pending))
                if first > tag:
                    break
                self._settle(first, self._pending.pop(first), nacked)
        else:
            pending = self._pending.pop(tag, None)
            if pending is not None:
                self._settle(tag, pending, nacked)
        owing = self._owing
        while owing:
            owing.pop().send_acks()  # the acks these confirms made due, in this frame's turn

    def _settle(self, tag: int, future: asyncio.Future[None], nacked: bool) -> None:
        returned = tag in self._returned
        self._returned.discard(tag)
        then = self._then.pop(tag, None)
        if future.done():
            return
        if nacked:
            future.set_exception(PublishNacked("broker nacked the message"))
        elif returned:
            future.set_exception(PublishReturned("the broker routed the message to no queue"))
        else:
            future.set_result(None)
            if then is not None:
                try:
                    then()
                except Exception:
                    # Not into pika's frame handling: the other confirms of this frame still
                    # settle. What this one would have acked stays unacked, and comes back.
                    log.exception("a confirm's callback failed")

    def _on_return(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Return,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        tag = (properties.headers or {}).get(PUBLISH_TAG_HEADER)
        if isinstance(tag, int):
            self._returned.add(tag)

    def _on_close(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        self.closed_reason = reason
        self._unacked.clear()  # the broker gives them all back
        self._acks_due.clear()
        self._owing.discard(self)
        self._then.clear()
        for rpc in self._rpcs:
            if not rpc.done():
                rpc.set_exception(ConnectionLost(f"channel closed: {reason}"))
        self._rpcs.clear()
        while self._pending:
            _, future = self._pending.popitem(last=False)
            if not future.done():
                future.set_exception(ConnectionLost(f"channel closed: {reason}"))
