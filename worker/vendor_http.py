"""HTTP to a vendor: keep-alive connections or the shared aiohttp session, metrics, transport errors.

Vendor clients (``handlers/<vendor>/client.py``) build on :class:`VendorHTTP`
and map the *bodies* of answers to errors; this module maps what happens on
the wire, the same way for every vendor and either way a request went (a
body of bytes or JSON on :mod:`worker.keepalive`, anything else on aiohttp):

- no connection could be made             -> VendorUnavailable, not applied
- 429                                     -> RateLimited with Retry-After, not applied
- 503                                     -> VendorUnavailable, not applied
- other 5xx, a timeout, a dropped answer  -> VendorUnavailable, maybe applied

"Maybe applied" means the vendor may have acted before failing: the runtime
will not retry such an error for a command that is unsafe to repeat.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson
import yarl

from worker import keepalive, tracing
from worker.errors import RateLimited, TransientError, VendorUnavailable
from worker.metrics import VENDOR_LATENCY, VENDOR_REQUESTS


class Limiter(Protocol):
    """Waits until one more request to this vendor account is allowed."""

    async def acquire(self) -> None: ...


class VendorResponse(NamedTuple):
    """A vendor's answer (a tuple: one a call, without a frozen dataclass's ``object.__setattr__`` per field)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or ``None`` when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (now if now is not None else time.time()))


_PLAIN_TARGET = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")
"""A path and query that needs no percent-encoding (no ``%``: yarl decides what an escape is)."""
_KEEPALIVE_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_KEEPALIVE_ARGUMENTS = frozenset({"headers", "data", "json"})


class VendorHTTP:
    """Requests to one vendor account, with metrics and wire-level errors."""

    def __init__(
        self,
        vendor: str,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        timeout: float = 15.0,
        limiter: Limiter | None = None,
        pool: keepalive.KeepAlivePool | None = None,
    ) -> None:
        self.vendor = vendor
        self.pool = pool
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.limiter = limiter
        parsed = urlsplit(self.base_url)
        self._host = parsed.hostname
        self._port = parsed.port
        self._base_path = parsed.path

    async def request(
        self,
        method: str,
        endpoint: str,
        path: str | None = None,
        **kwargs: Any,
    ) -> VendorResponse:
        """Send one request; ``endpoint`` is the route template used as a metric label.

        ``path`` is the concrete path (defaults to ``endpoint``); other keyword
        arguments go to :meth:`aiohttp.ClientSession.request`.
        Answers 2xx-4xx (but 429) are returned for the caller to interpret.
        """
        if self.limiter is not None:
            await self.limiter.acquire()
        url = self.base_url + (path if path is not None else endpoint)
        if tracing.state.enabled and tracing.recording():
            with tracing.client_span(self.vendor, method, endpoint, self._host, self._port) as span:
                try:
                    answer = await self._send(method, endpoint, url, kwargs)
                except TransientError as exc:
                    tracing.record_status(span, exc.details.get("http_status"), exc)
                    raise
                tracing.record_status(span, answer.status)
                return answer
        return await self._send(method, endpoint, url, kwargs)

    async def _send(self, method: str, endpoint: str, url: str, kwargs: dict[str, Any]) -> VendorResponse:
        started = time.perf_counter()
        status_label = "error"
        timeout = kwargs.pop("timeout", self.timeout)  # a caller may size it (uploads)
        try:
            if (
                self.pool is not None
                and method in _KEEPALIVE_METHODS
                and kwargs.keys() <= _KEEPALIVE_ARGUMENTS
                and isinstance(kwargs.get("data", b""), bytes)  # a form or a stream: aiohttp's
            ):
                answer = await self._send_keepalive(self.pool, method, url, kwargs, timeout.total)
            else:
                async with self.session.request(
                    method, url, timeout=timeout, allow_redirects=False, **kwargs
                ) as response:
                    body = await response.read()
                    answer = VendorResponse(response.status, response.headers, body)
            status_label = str(answer.status)
        except (aiohttp.ClientConnectorError, keepalive.ConnectFailed) as exc:
            cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc.__cause__
            raise VendorUnavailable(
                f"{self.vendor}: cannot connect ({cause.__class__.__name__})",
                code="vendor_unreachable",
                maybe_applied=False,
            ) from exc
        except (aiohttp.ConnectionTimeoutError, keepalive.NotSent) as exc:
            raise VendorUnavailable(
                f"{self.vendor}: connecting timed out",
                code="vendor_unreachable",
                maybe_applied=False,
            ) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise VendorUnavailable(
                f"{self.vendor}: no answer within {timeout.total}s",
                code="vendor_timeout",
                maybe_applied=True,
            ) from exc
        except (aiohttp.ClientError, keepalive.ResponseLost) as exc:
            raise VendorUnavailable(
                f"{self.vendor}: connection lost ({exc.__class__.__name__})",
                code="vendor_connection_lost",
                maybe_applied=True,
            ) from exc
        finally:
            elapsed = time.perf_counter() - started
            VENDOR_REQUESTS.labels(self.vendor, endpoint, status_label).inc()
            VENDOR_LATENCY.labels(self.vendor, endpoint).observe(elapsed)
        return self._raise_for_transient(answer)

    async def _send_keepalive(
        self,
        pool: keepalive.KeepAlivePool,
        method: str,
        url: str,
        kwargs: dict[str, Any],
        seconds: float | None,
    ) -> VendorResponse:
        """The request as aiohttp would send it (its request target, Content-Type and JSON), on ``pool``."""
        headers: Mapping[str, str] = kwargs.get("headers") or {}
        body = kwargs.get("data")
        if kwargs.get("json") is not None:
            if body is not None:
                raise ValueError("data and json cannot both be given")
            body = orjson.dumps(kwargs["json"])
            headers = {"Content-Type": "application/json", **headers}
        elif body is not None and not any(name.lower() == "content-type" for name in headers):
            headers = {**headers, "Content-Type": "application/octet-stream"}  # as aiohttp
        target = url[len(self.base_url) - len(self._base_path) :] if url.startswith(self.base_url) else ""
        if not target.startswith("/") or not _PLAIN_TARGET.fullmatch(target):
            target = yarl.URL(url).raw_path_qs  # what aiohttp writes on the request line
        answer = await pool.request(method, target, headers, body, seconds or self.timeout.total or 300.0)
        return VendorResponse(answer.status, answer.headers, answer.body)

    def _raise_for_transient(self, answer: VendorResponse) -> VendorResponse:
        status = answer.status
        if status == 429:
            raise RateLimited(
                f"{self.vendor}: rate limited (HTTP 429)",
                retry_after=parse_retry_after(answer.headers.get("Retry-After")),
                details={"http_status": 429},
            )
        if status == 503:
            raise VendorUnavailable(
                f"{self.vendor}: service unavailable (HTTP 503)",
                code="vendor_unavailable",
                retry_after=parse_retry_after(answer.headers.get("Retry-After")),
                details={"http_status": 503},
            )
        if status >= 500:
            raise VendorUnavailable(
                f"{self.vendor}: server error (HTTP {status})",
                code="vendor_server_error",
                maybe_applied=True,
                details={"http_status": status},
            )
        return answer
