"""The worker process: connect, declare, consume, reconnect, drain.

It owns the broker connection and the lifecycle of everything shared (HTTP
session, store, vendor clients, the HTTP port); each command is handed to the
:class:`~worker.dispatcher.Dispatcher` as its own task, so hundreds are in
flight at once while they wait on vendor HTTP.

On SIGTERM/SIGINT: stop consuming, flip ``/readyz`` to failing, let in-flight
commands finish within the grace period, close the connection (what is still
unacked goes back to the queue for another worker), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import aiohttp
import orjson
import pika.channel
import pika.spec
import redis.asyncio as aioredis

from worker import file_budget, topology, tracing
from worker.accounts import Accounts, build_clients, resolve
from worker.amqp import Channel, Connection, ConnectionLost
from worker.breaker import BreakerState, CircuitBreaker
from worker.config import Settings, check_environment
from worker.controls import Controls
from worker.dispatcher import Delivery, Dispatcher, DispatchSettings
from worker.http import Limits, build_app, build_webhook_app, serve
from worker.logging import get_logger
from worker.membership import LOCAL_BACKENDS, Membership, check_unshared_store
from worker.metrics import BROKER_CONNECTED, BROKER_RECONNECTS, IN_FLIGHT
from worker.outbox import Outbox
from worker.registry import Registry, VendorClient, WebhookContext
from worker.retry import RetryPolicy
from worker.store import REDIS_POOL_SIZE, Stores, open_stores
from worker.store import redis as redis_store

log = get_logger("switchboard.runtime")

PRUNE_EVERY_SECONDS = 600.0
UNROUTED_PREFETCH = 32


class Runtime:
    def __init__(
        self, settings: Settings, registry: Registry, *, consume: bool = True, webhooks: bool | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.consume = consume
        self.webhooks = settings.webhooks if webhooks is None else webhooks
        self.stopping = asyncio.Event()
        self.connection: Connection | None = None
        self.publish_channel: Channel | None = None
        self.consumers: dict[str, tuple[Channel, str]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.ready = False
        self.breakers: dict[str, CircuitBreaker] = {}
        self.prefetch: dict[str, int] = {}
        """Per vendor queue: the prefetch now (a new consumer starts small and doubles up to max_in_flight)."""
        self._ramp_successes: dict[str, int] = {}
        self._pausing: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.outbox = Outbox(lambda: self.publish_channel)
        self.membership: Membership | None = None
        self._store_check_pending = False
        self._backend = ""
        self._last_url: str | None = None
        self._topology = topology.build(
            {vendor: registry.types_of(vendor) for vendor in registry.vendors},
            delivery_limit=settings.delivery_limit,
        )

    # -- lifecycle --------------------------------------------------------------
    async def run(self) -> int:
        check_environment(self.registry)
        tracing.setup()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        # Everything start-up opens is pushed on this stack the moment it is open, so a
        # failure at any later step (a port in use, a bad account) closes what came before,
        # and a normal exit closes it all in reverse order.
        async with contextlib.AsyncExitStack() as stack:
            accounts = await self._start(stack)
            stack.push_async_callback(self._close_connection)
            await self._connection_loop(accounts.vendors)
            await self._drain()
        log.info("worker stopped")
        return 0

    async def _start(self, stack: contextlib.AsyncExitStack) -> Accounts:
        """Open stores, pools, sandboxes, clients, the HTTP listeners and the background tasks."""
        stores = await open_stores(
            self.settings.store_url.get_secret_value(),
            retention_seconds=self.settings.retention_days * 86400,
            postgres_pool_size=self.settings.postgres_pool_size,
            postgres_statement_cache_size=self.settings.postgres_statement_cache_size,
        )
        stack.push_async_callback(stores.close)
        if stores.redis is not None:
            await redis_store.warn_if_keeps_nothing(stores.redis)
        redis_client = self._shared_redis(stores, stack)
        file_budget.configure(self.settings.file_memory_budget_bytes)
        accounts = await resolve(self.settings, self.registry, stack)
        if redis_client is None and stores.backend not in LOCAL_BACKENDS and self.consume:
            _warn_unshared_rate_limits(accounts)
        connector = aiohttp.TCPConnector(limit=max(100, self.settings.max_in_flight * 2), ttl_dns_cache=300)
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        clients = build_clients(accounts, self.registry, session, self.settings, redis_client, stack)
        controls = Controls(stores.controls, max_wait_seconds=self.settings.pause_max_defer_seconds)
        await controls.refresh()
        if stores.controls is not None:
            membership = self.membership = Membership(
                stores.controls, accounts.vendors if self.consume else []
            )
            await membership.heartbeat()
            stack.push_async_callback(membership.leave)
            self._store_check_pending = (
                self.consume and stores.backend in LOCAL_BACKENDS and not self.settings.allow_unshared_store
            )
            _own_task(stack, membership.run())
        self._backend = stores.backend
        self.dispatcher = self._dispatcher(clients, stores, accounts, controls)
        await self._serve_http(accounts, stores, stack)
        _own_task(stack, self._prune(stores))
        _own_task(stack, controls.run())
        # A worker that starts during an outage starts in the fleet's state: read it before consuming.
        await self._sync_breakers()
        _own_task(stack, self._sync_breakers_forever())
        if self.settings.live_lease_seconds:
            _own_task(stack, self.dispatcher.renew_leases())
        stack.push_async_callback(self._cancel_pauses_and_ramps)
        log.info(
            "worker started",
            vendors=accounts.vendors,
            store=stores.backend,
            metrics_port=self.settings.metrics_port,
            max_in_flight=self.settings.max_in_flight,
        )
        return accounts

    def _shared_redis(self, stores: Stores, stack: contextlib.AsyncExitStack) -> aioredis.Redis | None:
        """The Redis the rate limits share: the store's own client (one pool) when it is the same Redis."""
        url = self.settings.shared_redis_url()
        if url is None:
            return None
        if stores.redis is not None and url == self.settings.store_url.get_secret_value():
            return stores.redis
        client = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(url, max_connections=REDIS_POOL_SIZE, timeout=10)
        )
        stack.push_async_callback(client.aclose)
        return client

    async def _cancel_pauses_and_ramps(self) -> None:
        tasks = [*self._pausing.values(), *self._background]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: no new commands; finishing those in flight", in_flight=len(self.tasks))
            self.ready = False
            self.stopping.set()

    def _dispatcher(
        self,
        clients: Mapping[tuple[str, str], VendorClient],
        stores: Stores,
        accounts: Accounts,
        controls: Controls,
    ) -> Dispatcher:
        s = self.settings
        for vendor in accounts.vendors:
            self.breakers[vendor] = CircuitBreaker(
                vendor,
                failure_threshold=s.breaker_failures,
                cooldown_seconds=s.breaker_cooldown_seconds,
                on_change=self._breaker_changed,
                shared=stores.breakers,
            )
        dispatcher = Dispatcher(
            self.registry,
            clients,
            stores,
            self.outbox,
            self.breakers,
            DispatchSettings(
                max_message_bytes=s.max_message_bytes,
                lease_seconds=s.lease_seconds,
                handler_timeout_seconds=s.handler_timeout_seconds,
                defer_seconds=s.defer_seconds,
                poison_redeliveries=max(1, s.delivery_limit - 2),
                max_result_bytes=s.max_result_bytes,
                reply_to_allow=s.reply_to_names(),
                policy=RetryPolicy(
                    s.max_attempts, s.max_age_seconds, s.retry_base_seconds, s.retry_max_seconds
                ),
                live_lease_seconds=s.live_lease_seconds,
            ),
            controls=controls,
            windows={
                key: account.sending_window
                for key, account in accounts.accounts.items()
                if account.sending_window is not None
            },
        )
        dispatcher.on_transient = self._vendor_failed
        return dispatcher

    def _http_limits(self) -> Limits:
        s = self.settings
        return Limits(
            header_timeout_seconds=s.http_header_timeout_seconds,
            read_timeout_seconds=s.http_read_timeout_seconds,
            idle_timeout_seconds=s.http_idle_timeout_seconds,
            max_connections=s.http_max_connections,
        )

    async def _serve_http(self, accounts: Accounts, stores: Stores, stack: contextlib.AsyncExitStack) -> None:
        """The probes and /metrics; webhooks on their own port when SWITCHBOARD_WEBHOOK_PORT is set."""
        s, limits = self.settings, self._http_limits()
        webhook_apps = self._webhook_apps(accounts, stores)
        if s.webhook_port is None or s.webhook_port == s.metrics_port != 0 or not webhook_apps:
            if webhook_apps:
                log.warning(
                    "webhooks share the metrics port; set SWITCHBOARD_WEBHOOK_PORT so a flood of "
                    "webhook clients cannot starve the probes"
                )
            shared = await serve(
                build_app(lambda: self.ready, webhook_apps, limits), s.metrics_host, s.metrics_port
            )
            stack.push_async_callback(shared.cleanup)
            return
        probes = await serve(build_app(lambda: self.ready, None, limits), s.metrics_host, s.metrics_port)
        stack.push_async_callback(probes.cleanup)
        hooks = await serve(build_webhook_app(webhook_apps, limits), s.metrics_host, s.webhook_port)
        stack.push_async_callback(hooks.cleanup)
        log.info("webhooks served on their own port", webhook_port=s.webhook_port)

    def _webhook_apps(self, accounts: Accounts, stores: Stores) -> dict[str, Any]:
        apps = {}
        if self.webhooks:
            for vendor in accounts.vendors:
                factory = self.registry.vendors[vendor].webhook_app
                if factory is not None:
                    apps[vendor] = factory(
                        WebhookContext(
                            accounts=accounts.settings_of(vendor),
                            publish=self.publish_event,
                            suppressions=stores.suppressions,
                            deduper=stores.deduper,
                            log=get_logger(f"switchboard.webhooks.{vendor}"),
                            publish_timeout_seconds=self.settings.webhook_publish_timeout_seconds,
                        )
                    )
        return apps

    async def publish_event(self, routing_key: str, event: dict[str, Any]) -> None:
        """For webhooks: publish an event and return once the broker confirmed."""
        await self.outbox.event(
            orjson.dumps(event),
            routing_key=routing_key,
            event_id=str(event.get("event_id", "")),
            command_id=None,
        )

    async def _sync_breakers(self) -> None:
        for breaker in self.breakers.values():
            try:
                await breaker.sync()
            except Exception:
                log.warning("reading the fleet's breaker failed", vendor=breaker.vendor, exc_info=True)

    async def _sync_breakers_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.breaker_sync_seconds)
            await self._sync_breakers()

    async def _prune(self, stores: Stores) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY_SECONDS)
            try:
                removed = await stores.idempotency.prune(time.time())
                log.debug("pruned expired records", removed=removed)
            except Exception:
                log.warning("pruning the store failed", exc_info=True)

    # -- broker -------------------------------------------------------------------
    async def _connection_loop(self, vendors: list[str]) -> None:
        delay = 0.5
        first = True
        while not self.stopping.is_set():
            lost = asyncio.Event()
            try:
                await self._connect(vendors, lost)
            except (TimeoutError, ConnectionLost, OSError) as exc:
                log.warning("broker not reachable; retrying", error=str(exc), retry_in_seconds=delay)
                await self._close_connection()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, 30.0)
                continue
            if not first:
                BROKER_RECONNECTS.inc()
            first, delay = False, 0.5
            self.ready = True
            BROKER_CONNECTED.set(1)
            log.info("connected to the broker; consuming", queues=sorted(self.consumers))
            stop_wait = asyncio.create_task(self.stopping.wait())
            lost_wait = asyncio.create_task(lost.wait())
            await asyncio.wait({stop_wait, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            lost_wait.cancel()
            self.ready = False
            BROKER_CONNECTED.set(0)
            if lost.is_set() and not self.stopping.is_set():
                log.warning("broker connection lost; reconnecting")
                self.consumers.clear()
                self.publish_channel = None

    async def _connect(self, vendors: list[str], lost: asyncio.Event) -> None:
        # One address or a cluster's: random order, the node just lost tried last.
        connection = await asyncio.wait_for(
            Connection.connect_any(
                self.settings.amqp_url.get_secret_value(), name="switchboard-worker", last=self._last_url
            ),
            60,
        )
        self.connection = connection
        self._last_url = connection.url
        connection.on_lost = lambda reason: lost.set()
        log.info("connected to a broker node", node=connection.address, version=connection.server_version)
        channels: list[Channel] = [await connection.channel()]

        async def reopen() -> Channel:
            channels.append(await connection.channel())
            return channels[-1]

        warnings = await topology.declare(
            channels[0], topology.for_broker(self._topology, connection.server_version), reopen
        )
        for warning in warnings:
            log.warning("queue arguments not applied", detail=warning)
        if self._store_check_pending and self.membership is not None:
            # Once, before this worker consumes: its own consumer must not count against it.
            queues = {vendor: topology.vendor_queue(vendor) for vendor in vendors}
            await check_unshared_store(channels[-1], self.membership, queues, self._backend)
            self._store_check_pending = False
        for setup in channels:
            await setup.close()
        publish = await connection.channel()
        await publish.enable_confirms()
        self.publish_channel = publish
        if not self.consume:
            return
        for vendor in vendors:
            if self.breakers[vendor].blocked():
                self._pause(vendor)  # it subscribes when the cool-down is over
            else:
                await self._subscribe_vendor(vendor)
        await self._subscribe("unrouted", topology.UNROUTED_QUEUE, UNROUTED_PREFETCH)

    async def _subscribe_vendor(self, vendor: str) -> None:
        """Consume a vendor queue with a small prefetch first (see :meth:`_delivery_settled`)."""
        self.prefetch[vendor] = min(self.settings.prefetch_start, self.settings.max_in_flight)
        self._ramp_successes[vendor] = 0
        await self._subscribe(vendor, topology.vendor_queue(vendor), self.prefetch[vendor])

    def _vendor_failed(self, vendor: str) -> None:
        """A transient vendor failure starts the prefetch ramp's batch again."""
        if vendor in self._ramp_successes:
            self._ramp_successes[vendor] = 0

    def _delivery_settled(self, vendor: str) -> None:
        """Double the prefetch after each batch of that many settled deliveries.

        A new worker (or one back from an open breaker) thus takes 8, 16, 32 ... commands, not
        max_in_flight at once, at a vendor that may still be failing; a transient failure
        restarts the batch. Every settled delivery counts, not only vendor calls: replays and
        rejections touch no vendor, and a backlog of them must not stay at the first prefetch.
        """
        prefetch = self.prefetch.get(vendor)
        if prefetch is None or prefetch >= self.settings.max_in_flight:
            return
        self._ramp_successes[vendor] += 1
        if self._ramp_successes[vendor] < prefetch:
            return
        self._ramp_successes[vendor] = 0
        self.prefetch[vendor] = min(prefetch * 2, self.settings.max_in_flight)
        task = asyncio.get_running_loop().create_task(self._resubscribe(vendor))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resubscribe(self, vendor: str) -> None:
        """A new prefetch: RabbitMQ applies a per-consumer prefetch to new consumers only (quorum
        queues have no channel-wide one), so consume again on the same channel. Unacked
        deliveries stay on the channel and are acked there as usual."""
        entry = self.consumers.get(vendor)
        if entry is None:
            return
        channel, tag = entry
        try:
            await channel.qos(self.prefetch[vendor])
            await channel.cancel(tag)
            if self.consumers.get(vendor) != entry:
                return  # paused or reconnected meanwhile
            new_tag = await channel.consume(
                topology.vendor_queue(vendor),
                self._on_message(vendor, topology.vendor_queue(vendor), channel),
            )
            self.consumers[vendor] = (channel, new_tag)
            log.info("prefetch raised", vendor=vendor, prefetch=self.prefetch[vendor])
        except ConnectionLost:
            pass  # the connection loop subscribes again

    async def _subscribe(self, vendor: str, queue: str, prefetch: int) -> None:
        assert self.connection is not None
        channel = await self.connection.channel()
        await channel.qos(prefetch)
        tag = await channel.consume(queue, self._on_message(vendor, queue, channel))
        self.consumers[vendor] = (channel, tag)

    async def _unsubscribe(self, vendor: str) -> None:
        entry = self.consumers.pop(vendor, None)
        if entry is not None:
            channel, tag = entry
            with contextlib.suppress(ConnectionLost):
                await channel.cancel(tag)

    def _on_message(self, vendor: str, queue: str, channel: Channel) -> Any:
        gauge = IN_FLIGHT.labels(vendor)
        loop = asyncio.get_running_loop()
        settled = self._settled(gauge, vendor)  # one callback per subscription, not one per message

        def on_message(
            _: pika.channel.Channel,
            method: pika.spec.Basic.Deliver,
            properties: pika.spec.BasicProperties,
            body: bytes,
        ) -> None:
            delivery = Delivery(channel, method.delivery_tag, method.routing_key, properties, body, queue)
            gauge.inc()
            task = loop.create_task(self.dispatcher.handle(delivery))
            self.tasks.add(task)
            task.add_done_callback(settled)

        return on_message

    def _settled(self, gauge: Any, vendor: str) -> Any:
        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            gauge.dec()
            self._delivery_settled(vendor)

        return done

    def _breaker_changed(self, vendor: str, state: BreakerState) -> None:
        log.warning("circuit breaker changed", vendor=vendor, state=state.name.lower())
        if state == BreakerState.OPEN:
            self._pause(vendor)

    def _pause(self, vendor: str) -> None:
        """One pause per vendor at a time: a running one re-reads the cool-down as it moves."""
        running = self._pausing.get(vendor)
        if running is None or running.done():
            self._pausing[vendor] = asyncio.get_running_loop().create_task(self._pause_vendor(vendor))

    async def _pause_vendor(self, vendor: str) -> None:
        """Stop taking this vendor's commands for the cool-down, then probe."""
        await self._unsubscribe(vendor)
        breaker = self.breakers[vendor]
        # The fleet may move the end (a failed probe elsewhere) or close it (a probe succeeded).
        while breaker.blocked() and not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self.stopping.wait(),
                    min(breaker.remaining_cooldown(), self.settings.breaker_sync_seconds),
                )
        if (
            self.stopping.is_set()
            or vendor in self.consumers
            or self.connection is None
            or not self.connection.is_open
        ):
            return
        with contextlib.suppress(ConnectionLost):
            await self._subscribe_vendor(vendor)

    async def _drain(self) -> None:
        for vendor in list(self.consumers):
            await self._unsubscribe(vendor)
        if self.tasks:
            log.info(
                "draining in-flight commands",
                in_flight=len(self.tasks),
                grace_seconds=self.settings.shutdown_grace_seconds,
            )
            _, pending = await asyncio.wait(set(self.tasks), timeout=self.settings.shutdown_grace_seconds)
            if pending:
                log.warning(
                    "grace period over; leaving unfinished commands to another worker",
                    unfinished=len(pending),
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def _close_connection(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
        self.publish_channel = None


def _own_task(stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` in the background until ``stack`` closes: then cancel it and wait for it to end."""
    task = asyncio.create_task(work)

    async def cancel() -> None:
        task.cancel()
        await asyncio.wait([task])

    stack.push_async_callback(cancel)


def _warn_unshared_rate_limits(accounts: Accounts) -> None:
    """A fleet on a shared store without Redis: each worker keeps its own rate limits; say so, once."""
    limited = sorted(
        f"{vendor}/{alias}"
        for (vendor, alias), account in accounts.accounts.items()
        if account.rate_limit_per_second > 0
    )
    if limited:
        log.warning(
            "rate limits are kept in each worker process (no SWITCHBOARD_REDIS_URL): N workers together"
            " send up to N x rate_limit_per_second per account; set SWITCHBOARD_REDIS_URL to share them",
            accounts=limited,
        )
