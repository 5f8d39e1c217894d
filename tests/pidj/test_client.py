"""The client: Basic auth, form bodies, and how answers map to errors."""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import parse_qs

import pytest

from handlers.pidj.client import PidjClient, build_form, interpret, path_segment
from handlers.pidj.sandbox import PidjSimulator
from handlers.pidj.sandbox_state import PRIMARY_GROUP
from handlers.pidj.settings import PidjAccount
from handlers.simulator import Fault
from worker.errors import (
    PermanentError,
    RateLimited,
    VendorAuthFailed,
    VendorRejected,
    VendorUnavailable,
)
from worker.vendor_http import VendorResponse


def answer(status: int, body: bytes) -> VendorResponse:
    return VendorResponse(status, {}, body)


class TestInterpret:
    def test_success_body_is_returned(self) -> None:
        """status success gives the body."""
        assert (
            interpret(answer(200, b'{"code":200,"status":"success","x":1}'), method="GET", endpoint="/x")["x"]
            == 1
        )

    @pytest.mark.parametrize("status", ["failure", "error"])
    def test_200_with_failure_status_is_vendor_failure(self, status: str) -> None:
        """HTTP 200 does not mean success: status failure/error is VendorRejected with Pidj's message."""
        body = f'{{"code":200,"status":"{status}","message":"Group has no phone number."}}'.encode()
        with pytest.raises(VendorRejected) as caught:
            interpret(answer(200, body), method="POST", endpoint="/send")
        assert caught.value.code == "vendor_failure"
        assert "Group has no phone number." in caught.value.message

    def test_401_is_auth_failed(self) -> None:
        """401 is VendorAuthFailed (nothing to refresh with Basic auth)."""
        with pytest.raises(VendorAuthFailed):
            interpret(answer(401, b""), method="GET", endpoint="/groups")

    def test_404_is_not_found(self) -> None:
        """404 is VendorRejected not_found."""
        with pytest.raises(VendorRejected) as caught:
            interpret(
                answer(404, b'{"status":"error","message":"Contact not found."}'), method="GET", endpoint="/c"
            )
        assert caught.value.code == "not_found"

    def test_other_4xx_is_rejected(self) -> None:
        """400 is VendorRejected vendor_rejected with the HTTP status in details."""
        with pytest.raises(VendorRejected) as caught:
            interpret(answer(400, b'{"status":"error","message":"bad"}'), method="POST", endpoint="/send")
        assert caught.value.code == "vendor_rejected"
        assert caught.value.details["http_status"] == 400

    @pytest.mark.parametrize("body", [b"<html>ok</html>", b"[]", b'{"code":200}', b'{"status":"maybe"}'])
    def test_unreadable_2xx_is_invalid_vendor_response(self, body: bytes) -> None:
        """A 2xx that is not a JSON object with a known status is not a success."""
        with pytest.raises(PermanentError) as caught:
            interpret(answer(200, body), method="POST", endpoint="/send")
        assert caught.value.code == "invalid_vendor_response"
        assert not isinstance(caught.value, VendorRejected)


class TestForm:
    def test_none_dropped_blank_kept_lists_piped(self) -> None:
        """None is omitted, '' kept (clears on PUT), lists joined with |."""
        form = build_form({"a": None, "b": "", "roles": ["admin", "agent"], "n": 3})
        assert form == {"b": "", "roles": "admin|agent", "n": "3"}

    def test_path_segment_escapes_plus(self) -> None:
        """+ is escaped in a path (some servers read it as a space); ':' stays."""
        assert path_segment("+18885553333") == "%2B18885553333"
        assert path_segment("co:abc-1") == "co:abc-1"


class TestWire:
    async def test_basic_auth_and_form_content_type_are_sent(
        self, sim: PidjSimulator, make_client: Callable[..., PidjClient]
    ) -> None:
        """Every request carries Basic auth (key:token) and the form Content-Type; bodies are form-encoded."""
        client = make_client()
        await client.post(
            "/send", {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "a b"}
        )
        request = sim.requests[-1]
        assert request.content_type == "application/x-www-form-urlencoded"
        assert parse_qs(request.body.decode()) == {
            "to_number": ["+18885553333"],
            "from_number": ["+18885552222"],
            "text_body": ["a b"],
        }
        assert (
            sim_authorization(sim)
            == "Basic " + base64.b64encode(b"sandbox-account-key:sandbox-token").decode()
        )

    async def test_wrong_token_is_auth_failed(self, make_client: Callable[..., PidjClient]) -> None:
        """The simulator's 401 reaches the handler as VendorAuthFailed."""
        with pytest.raises(VendorAuthFailed):
            await make_client(token="wrong").get("/authorization-check")

    async def test_429_is_rate_limited_with_retry_after(
        self, sim: PidjSimulator, make_client: Callable[..., PidjClient]
    ) -> None:
        """429 with Retry-After is RateLimited carrying the hint."""
        sim.add_fault(Fault(status=429, retry_after=7, count=1))
        with pytest.raises(RateLimited) as caught:
            await make_client().get("/groups")
        assert caught.value.retry_after == 7

    async def test_500_after_processing_may_have_applied(
        self, sim: PidjSimulator, make_client: Callable[..., PidjClient]
    ) -> None:
        """A 500 after the text went out is VendorUnavailable maybe_applied (the runtime will not resend)."""
        sim.add_fault(Fault(status=500, after_processing=True, count=1))
        with pytest.raises(VendorUnavailable) as caught:
            await make_client().post(
                "/send", {"to_number": "+18885553333", "group_id": sim_group(), "text_body": "x"}
            )
        assert caught.value.maybe_applied
        assert len(sim.effects("text")) == 1

    async def test_slow_answer_times_out(
        self, sim: PidjSimulator, make_client: Callable[..., PidjClient]
    ) -> None:
        """An answer slower than the timeout is VendorUnavailable vendor_timeout."""
        sim.add_fault(Fault(kind="slow", delay=1.0, count=1))
        with pytest.raises(VendorUnavailable) as caught:
            await make_client(timeout=0.2).get("/groups")
        assert caught.value.code == "vendor_timeout"

    async def test_dropped_connection_is_unavailable(
        self, sim: PidjSimulator, make_client: Callable[..., PidjClient]
    ) -> None:
        """A connection dropped without an answer is VendorUnavailable (maybe applied); nothing was sent."""
        sim.add_fault(Fault(kind="drop"))
        with pytest.raises(VendorUnavailable) as caught:
            await make_client().post(
                "/send", {"to_number": "+18885553333", "group_id": sim_group(), "text_body": "x"}
            )
        assert caught.value.maybe_applied
        assert sim.effects("text") == []


def sim_authorization(sim: PidjSimulator) -> str:
    """The Authorization header of the last request, as the simulator saw it."""
    return sim.last_authorization


def sim_group() -> str:
    return PRIMARY_GROUP


class TestSettings:
    def test_secrets_do_not_print(self) -> None:
        """Token, key and webhook secret are hidden in repr."""
        account = PidjAccount.model_validate(
            {"account_key": "k", "token": "t0ken", "webhook_secret": "s" * 20}
        )
        assert "t0ken" not in repr(account) and "sssss" not in repr(account)
        assert account.base_url == "https://gopidj.com/api/2020"

    @pytest.mark.parametrize(
        "fields",
        [
            {"account_key": "a:b", "token": "t"},
            {"account_key": "k", "token": "t", "webhook_secret": "short"},
            {"account_key": "k", "token": "t", "webhook_secret": "has/slash/in/the/secret"},
            {"account_key": "k", "token": "t", "base_url": "gopidj.com/api/2020"},
            {"account_key": "k", "token": "t", "surprise": 1},
        ],
    )
    def test_bad_settings_fail_fast(self, fields: dict[str, object]) -> None:
        """A colon in the key, a short or non-URL-safe secret, a base URL without scheme, unknown fields."""
        with pytest.raises(ValueError):
            PidjAccount.model_validate(fields)
