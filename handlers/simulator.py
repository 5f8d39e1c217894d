"""What every vendor simulator shares: fault injection, records, a runner.

A simulator is a real aiohttp server on loopback. Besides the vendor's routes
it serves control routes under ``/_sandbox/`` so that tests (and people
trying ``make run``) can look at what it received and inject faults:

- ``GET  /_sandbox/requests``      every request received (no credentials)
- ``GET  /_sandbox/side-effects``  every side effect done (text sent, job created ...)
- ``POST /_sandbox/faults``        add faults: a JSON list of :class:`Fault` fields
- ``DELETE /_sandbox/faults``      clear faults
- ``POST /_sandbox/reset``         clear records, faults and vendor state

Fault kinds: ``status`` answers an HTTP status (429/503 carry ``Retry-After``)
without doing anything; ``slow`` waits ``delay`` seconds and then does the
request (the client's timeout fires while the side effect still happens);
``drop`` closes the connection without an answer, before doing the request
unless ``after_processing`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    kind: Literal["status", "slow", "drop"] = "status"
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0
    probability: float = 1.0
    count: int | None = None
    """How many requests it hits before it is used up; None = forever."""
    path_prefix: str = "/"
    method: str | None = None
    after_processing: bool = False
    """``status``/``drop``: do the request first, then fail (the side effect happened)."""

    def matches(self, request: web.Request) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if not request.path.startswith(self.path_prefix):
            return False
        return self.method is None or self.method.upper() == request.method


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: bytes
    at: float
    answered: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "content_type": self.content_type,
            "body": self.body.decode("utf-8", "replace"),
            "at": self.at,
            "answered": self.answered,
        }


@dataclass
class SideEffect:
    kind: str
    key: str
    """What makes two effects "the same" for counting repeats (e.g. a command's text)."""
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


class SimulatorBase:
    """Base of a vendor simulator; subclasses add routes in ``setup_routes``."""

    vendor = "vendor"

    def __init__(self, *, seed: int | None = None) -> None:
        self.requests: list[RecordedRequest] = []
        self.side_effects: list[SideEffect] = []
        self.faults: list[Fault] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.app = web.Application(middlewares=[self._middleware], client_max_size=200 * 1024 * 1024)
        self.app.router.add_get("/_sandbox/requests", self._get_requests)
        self.app.router.add_get("/_sandbox/side-effects", self._get_side_effects)
        self.app.router.add_post("/_sandbox/faults", self._post_faults)
        self.app.router.add_delete("/_sandbox/faults", self._delete_faults)
        self.app.router.add_post("/_sandbox/reset", self._post_reset)
        self.setup_routes(self.app.router)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- for subclasses -------------------------------------------------
    def setup_routes(self, router: web.UrlDispatcher) -> None:
        """Add the vendor's routes."""

    def reset_state(self) -> None:
        """Forget the vendor's own state (users, lists ...)."""

    def record_side_effect(self, kind: str, key: str, **data: Any) -> None:
        with self._lock:
            self.side_effects.append(SideEffect(kind, key, data))

    # -- for tests ------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def effects(self, kind: str | None = None) -> list[SideEffect]:
        with self._lock:
            return [e for e in self.side_effects if kind is None or e.kind == kind]

    def repeated_effects(self) -> dict[tuple[str, str], int]:
        """Side effects done more than once for the same (kind, key)."""
        counts: dict[tuple[str, str], int] = {}
        for effect in self.effects():
            counts[(effect.kind, effect.key)] = counts.get((effect.kind, effect.key), 0) + 1
        return {key: n for key, n in counts.items() if n > 1}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextlib.contextmanager
    def running_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve from a background thread (for tests that block); yields the base URL."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        holder: dict[str, str] = {}

        def serve() -> None:
            asyncio.set_event_loop(loop)
            holder["url"] = loop.run_until_complete(self.start(host, port))
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name=f"{self.vendor}-simulator", daemon=True)
        thread.start()
        if not started.wait(10):
            raise RuntimeError(f"{self.vendor} simulator did not start")
        try:
            yield holder["url"]
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    # -- machinery --------------------------------------------------------
    def _pick_fault(self, request: web.Request) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(request) and self._random.random() < fault.probability:
                    if fault.count is not None:
                        fault.count -= 1
                    return fault
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            return await handler(request)
        body = await request.read()
        record = RecordedRequest(
            request.method,
            request.path,
            dict(request.query),
            request.content_type,
            body,
            time.time(),
        )
        with self._lock:
            self.requests.append(record)
        fault = self._pick_fault(request)
        response = await self._answer(request, handler, fault)
        record.answered = response.status
        return response

    async def _answer(
        self, request: web.Request, handler: Handler, fault: Fault | None
    ) -> web.StreamResponse:
        if fault is None:
            return await handler(request)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return await handler(request)
        if fault.after_processing:
            await handler(request)
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(int(fault.retry_after))
        return web.json_response(
            {"error": f"injected fault: HTTP {fault.status}"}, status=fault.status, headers=headers
        )

    async def _get_requests(self, request: web.Request) -> web.Response:
        with self._lock:
            rows = [r.as_json() for r in self.requests]
        return web.json_response(rows)

    async def _get_side_effects(self, request: web.Request) -> web.Response:
        with self._lock:
            rows = [asdict(e) for e in self.side_effects]
        return web.json_response(rows)

    async def _post_faults(self, request: web.Request) -> web.Response:
        specs = await request.json()
        if isinstance(specs, dict):
            specs = [specs]
        try:
            faults = [Fault(**spec) for spec in specs]
        except TypeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        with self._lock:
            self.faults.extend(faults)
        return web.json_response({"faults": len(self.faults)})

    async def _delete_faults(self, request: web.Request) -> web.Response:
        with self._lock:
            self.faults.clear()
        return web.json_response({"faults": 0})

    async def _post_reset(self, request: web.Request) -> web.Response:
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self.side_effects.clear()
        self.reset_state()
        return web.json_response({"reset": True})
