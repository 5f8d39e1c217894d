"""The Pidj API client: HTTP Basic auth, form bodies, and what answers mean.

Every call goes through :meth:`PidjClient.call`, which maps answers to errors
in one place (wire errors -- 429, 5xx, timeouts -- are mapped by VendorHTTP):

- HTTP 401                                   -> VendorAuthFailed (Basic auth: nothing to refresh)
- HTTP 404                                   -> VendorRejected ``not_found``
- other 4xx                                  -> VendorRejected ``vendor_rejected``
- 2xx whose body is not a JSON object with a
  known ``status``                           -> PermanentError ``invalid_vendor_response``
- 2xx with ``status`` ``failure`` / ``error``  -> VendorRejected ``vendor_failure``
  (Pidj answers HTTP 200 for requests it refused: the body decides, not the code)

Error messages carry Pidj's own human-readable ``message`` (a status line such
as "Group has no phone number."), never credentials or the text we sent.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, unquote, urlencode

from handlers.pidj.settings import PidjAccount
from worker.errors import InvalidPayload, PermanentError, VendorAuthFailed, VendorRejected

if TYPE_CHECKING:
    from worker.vendor_http import VendorHTTP, VendorResponse

FORM = "application/x-www-form-urlencoded"
_OK = "success"
_REFUSED = frozenset({"failure", "error"})
_MAX_MESSAGE = 300
"""Longest vendor message we copy into an error (a status line, not a page of HTML)."""

Form = Mapping[str, str]

_QUOTED: dict[str, str] = {}
"""quote_plus of field names seen before: a few dozen, they repeat. Never of values: no
phone number or message text is kept beyond its request."""
_QUOTED_MAX_ENTRIES = 4096


def encode_form(form: Form) -> bytes:
    """``urlencode(form).encode("ascii")``, byte for byte, with less work per field.

    For a form of ``str`` names and values (what :func:`build_form` makes), each is
    ``quote_plus``-ed as urlencode does, the names remembered; anything else goes to
    urlencode itself.
    """
    parts = []
    for name, value in form.items():
        if type(name) is not str or type(value) is not str:
            return urlencode(form).encode("ascii")
        quoted_name = _QUOTED.get(name)
        if quoted_name is None:
            quoted_name = _remember(name)
        parts.append(quoted_name + "=" + quote_plus_fast(value))
    return "&".join(parts).encode("ascii")


_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9_.\-~ ]")
_ESCAPED_ASCII = {chr(code): f"%{code:02X}" for code in range(128)}


def _escape(match: re.Match[str]) -> str:
    return _ESCAPED_ASCII[match.group()]


def quote_plus_fast(text: str) -> str:
    """``urllib.parse.quote_plus(text)``, the same string (and the same errors).

    quote_plus escapes byte by byte in a Python loop once any byte needs it (any
    punctuation but ``_.-~``: ~5 us for a 76-character text with a comma). For an
    ASCII text a regex finds the characters to escape instead, and a text with none
    is returned with its spaces as ``+``; any other text goes to quote_plus itself.
    """
    if not text.isascii():
        return quote_plus(text)
    if _UNSAFE_ASCII.search(text) is None:  # letters, digits, _.-~ and spaces only
        return text.replace(" ", "+")
    return _UNSAFE_ASCII.sub(_escape, text).replace(" ", "+")


def _remember(text: str) -> str:
    quoted = quote_plus_fast(text)
    if len(_QUOTED) < _QUOTED_MAX_ENTRIES:
        _QUOTED[text] = quoted
    return quoted


def path_segment(value: str) -> str:
    """One URL path segment: ``+``, ``/``, ``?``, ``#`` and ``%`` escaped so every server reads it back the same.

    ``:`` (in ids such as ``co:...``) is a legal path character and stays as it is.
    A segment that is empty or only dots (``.``, ``..``, or ``%2e%2e`` once decoded)
    is refused: the HTTP client resolves dot segments (encoded or not), so such an id
    would reach another endpoint. Every id schema has a pattern that excludes them
    too; this is the last line should one be missed.
    """
    if not value.strip(".") or not unquote(value).strip("."):
        raise InvalidPayload(f"{value!r} cannot be a URL path segment (an id of dots only)")
    return quote(value, safe=":@-._~")


def build_form(fields: Mapping[str, Any]) -> Form:
    """The x-www-form-urlencoded fields of a request: ``None`` omitted, lists pipe-joined.

    Pidj reads an omitted field as "leave it" and a blank one as "clear it"
    (on PUT), so ``""`` is kept and only ``None`` is dropped.
    """
    form: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            form[name] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            form[name] = "|".join(str(item) for item in value)
        else:
            form[name] = str(value)
    return form


class PidjClient:
    """Calls to one Pidj account; the aiohttp session is shared and owned by the runtime."""

    def __init__(self, account: PidjAccount, http: VendorHTTP) -> None:
        self.account = account
        self.http = http
        credentials = f"{account.account_key.get_secret_value()}:{account.token.get_secret_value()}"
        # Built once; never logged (VendorHTTP logs no headers).
        self._authorization = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        # The same for every request (aiohttp copies it, never changes it).
        self._headers = {
            "Content-Type": FORM,
            "Accept": "application/json",
            "Authorization": self._authorization,
        }

    async def close(self) -> None:
        """Nothing of our own to release: the session belongs to the runtime."""

    async def get(self, endpoint: str, path: str | None = None) -> dict[str, Any]:
        return await self.call("GET", endpoint, path=path)

    async def post(
        self,
        endpoint: str,
        form: Form | None = None,
        path: str | None = None,
        *,
        accept_failure: bool = False,
    ) -> dict[str, Any]:
        return await self.call("POST", endpoint, path=path, form=form or {}, accept_failure=accept_failure)

    async def put(self, endpoint: str, form: Form | None = None, path: str | None = None) -> dict[str, Any]:
        return await self.call("PUT", endpoint, path=path, form=form or {})

    async def delete(self, endpoint: str, path: str | None = None) -> dict[str, Any]:
        return await self.call("DELETE", endpoint, path=path)

    async def call(
        self,
        method: str,
        endpoint: str,
        *,
        path: str | None = None,
        form: Form | None = None,
        accept_failure: bool = False,
    ) -> dict[str, Any]:
        """One request; returns the body of a ``status: success`` answer or raises.

        ``accept_failure`` returns a ``status: failure`` body instead of raising, for
        calls where Pidj's "failure" is an expected outcome (a consent text not due).

        ``endpoint`` is the route template (a metric label), ``path`` the concrete path.
        The document lists ``Content-Type: application/x-www-form-urlencoded`` as a
        required header, so every request carries it, with a (possibly empty) form body.
        """
        if method == "GET":
            answer = await self.http.request(method, endpoint, path, headers=self._headers)
        else:
            body = encode_form(form) if form else b""
            answer = await self.http.request(method, endpoint, path, headers=self._headers, data=body)
        return interpret(answer, method=method, endpoint=endpoint, accept_failure=accept_failure)


def interpret(
    answer: VendorResponse, *, method: str, endpoint: str, accept_failure: bool = False
) -> dict[str, Any]:
    """Map one Pidj answer (2xx-4xx; VendorHTTP already raised for 429/5xx) to a body or an error."""
    status = answer.status
    body = answer.json()
    if 200 <= status < 300 and isinstance(body, dict):
        outcome = body.get("status")
        if outcome == _OK or (accept_failure and outcome == "failure"):
            return body  # the common answer: no message or details to build
    message = _message(body)
    details: dict[str, Any] = {"http_status": status, "endpoint": endpoint}
    if status == 401:
        raise VendorAuthFailed("pidj: account key or token refused (HTTP 401)", details=details)
    if status == 404:
        raise VendorRejected(
            f"pidj: not found ({message or method + ' ' + endpoint})", code="not_found", details=details
        )
    if status >= 400:
        raise VendorRejected(
            f"pidj: request refused (HTTP {status}): {message or 'no message'}", details=details
        )
    if status < 200 or status >= 300 or not isinstance(body, dict):
        raise PermanentError(
            f"pidj: answer to {method} {endpoint} is not a JSON object (HTTP {status})",
            code="invalid_vendor_response",
            details=details,
        )
    outcome = body.get("status")
    if outcome == _OK or (accept_failure and outcome == "failure"):
        return body
    if outcome in _REFUSED:
        details["status"] = outcome
        raise VendorRejected(
            f"pidj: {outcome}: {message or 'no message'}", code="vendor_failure", details=details
        )
    raise PermanentError(
        f"pidj: answer to {method} {endpoint} has no known status",
        code="invalid_vendor_response",
        details=details,
    )


def _message(body: Any) -> str:
    """Pidj's human-readable message, if any, cut to a status line."""
    if not isinstance(body, dict):
        return ""
    for key in ("message", "error", "errors"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:_MAX_MESSAGE]
        if isinstance(value, list) and value:
            return "; ".join(str(item) for item in value)[:_MAX_MESSAGE]
    return ""
