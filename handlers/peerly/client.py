"""The Peerly client: login, the JWT, and what Peerly's answers mean.

Auth: ``POST /token-auth`` with md5(lower-cased e-mail) and md5(password)
gives a JWT that goes in ``Authorization: JWT <token>``. One token per
account, shared by every command of this client:

- Peerly's documented answer is only ``{"token": "<jwt token>"}``: nothing
  says the JWT carries an ``exp`` claim. When it does, the token is renewed
  when fewer than :data:`RENEW_MARGIN_SECONDS` remain by it; in any case it is
  renewed once it is ``token_max_age_seconds`` old (an account setting), so a
  token without ``exp`` works and is still replaced in time;
- a 401 drops it and the request is sent once more with a new token; a
  second 401 is :class:`VendorAuthFailed`;
- however many commands need a new token at once, one login is made
  (single flight) and they all wait on it, and share its failure too.

Answers (after :class:`VendorHTTP` has mapped 429/5xx/network errors):

- 4xx                       -> VendorRejected with Peerly's text (``error``,
                               ``message`` or ``Error``; credentials scrubbed)
- 2xx of the wrong shape    -> PermanentError ``invalid_vendor_response``
  (the caller checks the shape with :meth:`PeerlyClient.invalid_response`)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson
import structlog

from handlers.peerly.settings import PeerlyAccount
from worker.errors import InvalidPayload, PermanentError, VendorAuthFailed, VendorRejected

if TYPE_CHECKING:
    from worker.vendor_http import VendorHTTP, VendorResponse

RENEW_MARGIN_SECONDS = 300.0
"""Renew the JWT when fewer seconds than this remain before its ``exp``."""

MAX_UPLOAD_BYTES = 104_857_600
"""Peerly refuses files over 100 MiB; we refuse them before sending."""

log = structlog.get_logger(__name__)

_ERROR_KEYS = ("error", "message", "Error", "detail", "non_field_errors", "errors")
_MAX_TEXT = 500

FormFactory = Callable[[], aiohttp.FormData]
"""Builds a fresh multipart body: aiohttp cannot send one FormData twice (401 retry)."""


def path_segment(value: str, path: str) -> str:
    """``value`` percent-encoded as one URL path segment (ids go into Peerly's paths).

    The payload schemas already restrict ids to a safe alphabet; this is the
    second line: ``/`` and ``%`` are encoded, and a segment of only dots is
    refused because HTTP clients resolve ``.``/``..`` (even as ``%2E%2E``),
    which would send the request to another endpoint.
    """
    if not value or set(value) <= {"."}:
        raise InvalidPayload("an id may not be empty, '.' or '..'", path=path)
    return quote(value, safe="")


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def login_body(email: str, password: str) -> dict[str, str]:
    """The JSON of ``/token-auth``: never the raw credentials."""
    return {"email": md5_hex(email.strip().lower()), "password": md5_hex(password)}


def jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: only Peerly can), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    segment = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(segment))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def vendor_text(answer: VendorResponse) -> str:
    """Peerly's own words about a refusal; its bodies are not uniform."""
    body = answer.json()
    if isinstance(body, dict):
        for key in _ERROR_KEYS:
            if body.get(key):
                return _flatten(body[key])[:_MAX_TEXT]
    if body is not None:
        return _flatten(body)[:_MAX_TEXT]
    return answer.body.decode("utf-8", "replace").strip()[:_MAX_TEXT] or "no message"


def _flatten(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "; ".join(_flatten(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_flatten(item)}" for key, item in value.items())
    return str(value)


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float
    """When to log in again: ``exp`` minus the margin, or the max age, whichever is first."""


class PeerlyClient:
    """One Peerly account: a shared JWT and the calls the handlers make."""

    def __init__(
        self, account: PeerlyAccount, http: VendorHTTP, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.account = account
        self.http = http
        self._clock = clock
        self._token: _Token | None = None
        self._login_task: asyncio.Task[_Token] | None = None
        self.logins = 0
        """Logins made (tests and the sandbox check single flight with it)."""

    async def close(self) -> None:
        """Nothing of ours to close: the session belongs to the runtime."""
        self._token = None

    # -- requests ---------------------------------------------------------
    async def call(
        self,
        method: str,
        endpoint: str,
        *,
        path: str | None = None,
        json: Any = None,
        form: FormFactory | None = None,
        request_timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        """Send one authenticated request; the decoded JSON of a 2xx answer.

        ``endpoint`` is the route template (a metric label), ``path`` the
        concrete path; ``request_timeout`` replaces the vendor timeout (uploads size
        theirs). 4xx and a second 401 raise; see the module docstring.
        """
        token = await self._current_token()
        answer = await self._send(method, endpoint, path, token, json, form, request_timeout)
        if answer.status == 401:
            token = await self._token_after_401(token)
            answer = await self._send(method, endpoint, path, token, json, form, request_timeout)
            if answer.status == 401:
                raise VendorAuthFailed(
                    f"peerly: token refused on {endpoint} even after a new login",
                    details={"http_status": 401, "endpoint": endpoint},
                )
        if 400 <= answer.status < 500:
            text = self._scrub(vendor_text(answer))
            raise VendorRejected(
                f"peerly refused {method} {endpoint} (HTTP {answer.status}): {text}",
                details={"http_status": answer.status, "endpoint": endpoint, "vendor_error": text},
            )
        if not 200 <= answer.status < 300:
            raise self.invalid_response(endpoint, f"HTTP {answer.status}")
        return answer.json()

    async def _send(
        self,
        method: str,
        endpoint: str,
        path: str | None,
        token: str,
        json: Any,
        form: FormFactory | None,
        request_timeout: aiohttp.ClientTimeout | None = None,
    ) -> VendorResponse:
        headers = {"Authorization": f"JWT {token}", "Accept": "application/json"}
        kwargs: dict[str, Any] = {"headers": headers}
        if request_timeout is not None:
            kwargs["timeout"] = request_timeout
        if form is not None:
            kwargs["data"] = form()  # aiohttp sets multipart/form-data with its boundary
        elif json is not None:
            kwargs["json"] = json
        return await self.http.request(method, endpoint, path, **kwargs)

    @staticmethod
    def invalid_response(endpoint: str, why: str) -> PermanentError:
        """A 2xx that does not say what the document says it should."""
        return PermanentError(
            f"peerly: invalid response from {endpoint} ({why})",
            code="invalid_vendor_response",
            details={"endpoint": endpoint},
        )

    def account_id(self, payload: dict[str, Any]) -> str:
        """The payload's ``account_id``, else the account setting's."""
        value = payload.get("account_id") or self.account.account_id
        if not value:
            raise InvalidPayload(
                "account_id is required: the payload has none and the account has no default",
                path="/payload/account_id",
            )
        return str(value)

    # -- the token --------------------------------------------------------
    def _fresh(self) -> _Token | None:
        token = self._token
        if token is not None and self._clock() < token.renew_at:
            return token
        return None

    async def _current_token(self) -> str:
        token = self._fresh()
        if token is None:
            token = await self._login_once()
        return token.value

    async def _token_after_401(self, rejected: str) -> str:
        """A new token, unless another command already replaced the rejected one."""
        token = self._fresh()
        if token is not None and token.value != rejected:
            return token.value
        if self._token is not None and self._token.value == rejected:
            self._token = None
        return (await self._login_once()).value

    async def _login_once(self) -> _Token:
        # Single flight: every caller that needs a token while a login is under
        # way awaits that same login (and its failure) instead of starting one.
        task = self._login_task
        if task is None or task.done():
            task = asyncio.ensure_future(self._login())
            task.add_done_callback(_consume_exception)
            self._login_task = task
        return await asyncio.shield(task)

    async def _login(self) -> _Token:
        self.logins += 1
        answer = await self.http.request(
            "POST",
            "/token-auth",
            json=login_body(self.account.email.get_secret_value(), self.account.password.get_secret_value()),
            headers={"Accept": "application/json"},
        )
        if answer.status >= 400:
            text = self._scrub(vendor_text(answer))
            raise VendorAuthFailed(
                f"peerly: login refused (HTTP {answer.status}): {text}",
                details={"http_status": answer.status, "vendor_error": text},
            )
        body = answer.json()
        value = body.get("token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise VendorAuthFailed(
                "peerly: login answer has no token", details={"http_status": answer.status}
            )
        now = self._clock()
        renew_at = now + self.account.token_max_age_seconds
        exp = jwt_exp(value)
        if exp is not None:
            renew_at = min(renew_at, exp - RENEW_MARGIN_SECONDS)
        self._token = _Token(value, renew_at)
        log.info(
            "peerly login",
            vendor="peerly",
            token_has_exp=exp is not None,
            renew_in_seconds=int(renew_at - now),
        )
        return self._token

    def _scrub(self, text: str) -> str:
        """Peerly may echo what we sent; keep credentials (and their md5) out of errors."""
        email = self.account.email.get_secret_value()
        password = self.account.password.get_secret_value()
        secrets = {email, email.strip().lower(), password, *login_body(email, password).values()}
        if self._token is not None:
            secrets.add(self._token.value)
        for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def _consume_exception(task: asyncio.Task[_Token]) -> None:
    # The waiters re-raise it; this only stops "exception was never retrieved".
    if not task.cancelled():
        task.exception()


def make_client(account: PeerlyAccount, http: VendorHTTP) -> PeerlyClient:
    """The ``Vendor.make_client`` of Peerly."""
    return PeerlyClient(account, http)
