"""A strict Pidj simulator: a real HTTP server on loopback for tests and ``make run``.

Strict where the document is: HTTP Basic auth with the configured account key
and token (401 otherwise), ``application/x-www-form-urlencoded`` bodies on
POST/PUT (415 otherwise), no unknown or repeated form fields (400), E.164
numbers, id prefixes, exactly one of ``from_number``/``group_id``. The
vendor's behaviours live in ``sandbox_api.py``; fault injection, request and
side-effect records in :class:`handlers.simulator.SimulatorBase`.

For tests: :meth:`PidjSimulator.fire_webhook` (or ``fire_webhook_sync``, or
``POST /_sandbox/pidj/webhook`` with ``{"url": ..., "body": {...}}``) posts a
webhook to the worker as Pidj would.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import sys
import urllib.error
import urllib.request
from typing import Any

import aiohttp
from aiohttp import web

from handlers.pidj import sandbox_api as api
from handlers.pidj.sandbox_state import PRIMARY_NUMBER, Answer, PidjState, bad_request
from handlers.simulator import SimulatorBase
from worker.registry import Sandbox

API_ROOT = "/api/2020"
SANDBOX_ACCOUNT_KEY = "sandbox-account-key"
SANDBOX_TOKEN = "sandbox-token"
SANDBOX_WEBHOOK_SECRET = "sandbox-webhook-secret-0123456789"
FORM = "application/x-www-form-urlencoded"

ROUTES: tuple[tuple[str, str, api.Operation], ...] = (
    ("POST", "/send", api.send),
    ("POST", "/task/initiate", api.task_initiate),
    ("POST", "/user", api.user_create),
    ("PUT", "/user/{id}/recover", api.user_recover),
    ("POST", "/user/{id}/pause", api.user_pause),
    ("POST", "/user/{id}/unpause", api.user_unpause),
    ("GET", "/user/{id}", api.user_get),
    ("PUT", "/user/{id}", api.user_update),
    ("DELETE", "/user/{id}", api.user_delete),
    ("POST", "/sso/url", api.sso_url),
    ("POST", "/contact", api.contact_create),
    ("POST", "/contact/send-consent-text", api.consent_send),
    ("GET", "/contact/by-phone/{phone}", api.contact_by_phone),
    ("GET", "/contact/{contact_id}/{group_id}/check-consent", api.consent_check),
    ("GET", "/contact/{id}", api.contact_get),
    ("PUT", "/contact/{id}", api.contact_update),
    ("DELETE", "/contact/{id}", api.contact_delete),
    ("GET", "/contacts", api.contacts_list),
    ("GET", "/groups", api.groups_list),
    ("POST", "/series/subscribe", api.series_subscribe),
    ("GET", "/series", api.series_list),
    ("POST", "/survey/initiate", api.survey_initiate),
    ("GET", "/surveys", api.surveys_list),
    ("GET", "/authorization-check", api.authorization_check),
    ("POST", "/authorization-check", api.authorization_check),
)


class PidjSimulator(SimulatorBase):
    """Pidj API 2020 on loopback, seeded with groups (one without a number), a series and a survey."""

    vendor = "pidj"

    def __init__(
        self,
        *,
        account_key: str = SANDBOX_ACCOUNT_KEY,
        token: str = SANDBOX_TOKEN,
        webhook_secret: str | None = SANDBOX_WEBHOOK_SECRET,
        seed: int | None = None,
    ) -> None:
        self.account_key = account_key
        self.token = token
        self.webhook_secret = webhook_secret
        self.state = PidjState.seeded()
        self.last_authorization = ""
        """The Authorization header of the latest API request (for tests of what the client sends)."""
        super().__init__(seed=seed)

    @property
    def api_url(self) -> str:
        """The base URL a client uses (``.../api/2020``)."""
        return self.base_url + API_ROOT

    def account(self) -> dict[str, Any]:
        """Account settings that point at this simulator."""
        account: dict[str, Any] = {
            "base_url": self.api_url,
            "account_key": self.account_key,
            "token": self.token,
        }
        if self.webhook_secret is not None:
            account["webhook_secret"] = self.webhook_secret
        return account

    def setup_routes(self, router: web.UrlDispatcher) -> None:
        for method, route, operation in ROUTES:
            router.add_route(method, API_ROOT + route, self._endpoint(operation))
        router.add_route("*", API_ROOT + "/{tail:.*}", self._not_found)
        router.add_post("/_sandbox/pidj/webhook", self._fire_from_control)

    def reset_state(self) -> None:
        self.state = PidjState.seeded()

    # -- requests -------------------------------------------------------------------
    def _endpoint(self, operation: api.Operation) -> Any:
        async def handle(request: web.Request) -> web.Response:
            refused = self._authorize(request) or _content_type(request)
            if refused is not None:
                return _respond(refused)
            form = await _form(request)
            if isinstance(form, Answer):
                return _respond(form)
            # One event loop thread and no await below: each operation is atomic.
            return _respond(operation(self.state, form, dict(request.match_info), self.record_side_effect))

        return handle

    def _authorize(self, request: web.Request) -> Answer | None:
        self.last_authorization = request.headers.get("Authorization", "")
        scheme, _, encoded = self.last_authorization.partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            user, password = "", ""
        good_user = hmac.compare_digest(user.encode(), self.account_key.encode())
        good_password = hmac.compare_digest(password.encode(), self.token.encode())
        if scheme.lower() == "basic" and good_user and good_password:
            return None
        return bad_request("Unauthorized.", 401)

    async def _not_found(self, request: web.Request) -> web.Response:
        return _respond(self._authorize(request) or bad_request("Not found.", 404))

    # -- webhooks to the worker ----------------------------------------------------
    async def fire_webhook(
        self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> int:
        """POST ``body`` as JSON to ``url`` as Pidj's webhooks do; returns the HTTP status."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as answer,
        ):
            await answer.read()
            self.record_side_effect("webhook_fired", str(body.get("event")), status=answer.status)
            return answer.status

    def fire_webhook_sync(self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
        """``fire_webhook`` for blocking tests (no event loop needed)."""
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status = int(answer.status)
        except urllib.error.HTTPError as error:
            status = error.code
        self.record_side_effect("webhook_fired", str(body.get("event")), status=status)
        return status

    async def _fire_from_control(self, request: web.Request) -> web.Response:
        spec = await request.json()
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("url"), str)
            or not isinstance(spec.get("body"), dict)
        ):
            return web.json_response({"error": 'expected {"url": ..., "body": {...}}'}, status=400)
        status = await self.fire_webhook(spec["url"], spec["body"])
        return web.json_response({"status": status})


def _content_type(request: web.Request) -> Answer | None:
    """POST and PUT must say ``application/x-www-form-urlencoded`` ('Required' in the document)."""
    if request.method in ("POST", "PUT") and request.content_type != FORM:
        return bad_request(f"Content-Type must be {FORM}.", 415)
    return None


async def _form(request: web.Request) -> dict[str, str] | Answer:
    if request.method not in ("POST", "PUT"):
        return {}
    fields = await request.post()
    names = [name for name, _ in fields.items()]
    if len(names) != len(set(names)):
        return bad_request("A field is given more than once.")
    form: dict[str, str] = {}
    for name, value in fields.items():
        if not isinstance(value, str):
            return bad_request("File uploads are not accepted.")
        form[name] = value
    return form


def _respond(answer: Answer) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="Pidj API"'} if answer.http == 401 else None
    return web.json_response(answer.body, status=answer.http, headers=headers)


async def start_sandbox() -> Sandbox:
    """Start a simulator on a free loopback port; the account settings point at it."""
    simulator = PidjSimulator()
    await simulator.start()
    return Sandbox(account=simulator.account(), stop=simulator.stop)


async def serve(host: str = "127.0.0.1", port: int = 8925) -> None:
    """Run a simulator until cancelled (for ``switchboard sandbox pidj``)."""
    simulator = PidjSimulator()
    await simulator.start(host, port)
    account = simulator.account()
    print(f"pidj sandbox at {simulator.api_url} (group number {PRIMARY_NUMBER})", file=sys.stderr)
    for name, value in account.items():
        print(f"  SWITCHBOARD_PIDJ_{name.upper()}={value}", file=sys.stderr)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
