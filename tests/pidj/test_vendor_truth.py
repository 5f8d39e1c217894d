"""Issue 15: the simulator answers only what the Pidj document shows (or docs/vendor-assumptions.md records)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from handlers.pidj.sandbox import SANDBOX_ACCOUNT_KEY, SANDBOX_TOKEN, PidjSimulator

AUTH = "Basic " + base64.b64encode(f"{SANDBOX_ACCOUNT_KEY}:{SANDBOX_TOKEN}".encode()).decode()
FORM = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": AUTH}
DOCUMENTED_USER = {
    "first_name",
    "last_name",
    "business_name",
    "display_name",
    "email_address",
    "phone_number",
    "tags",
    "username",
    "roles",
    "external_id",
}
"""The keys of ``user`` in the document's sample answer to GET /user/{id}."""


@pytest.fixture
async def http(sim: PidjSimulator) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as session:

        async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            async with session.request(method, sim.api_url + path, headers=FORM, **kwargs) as answer:
                return answer.status, await answer.json(content_type=None)

        yield call


async def test_get_user_shows_only_the_documented_fields(http: Any) -> None:
    """GET /user/{id} answers the sample's fields: no id, groups or timezone the document does not show."""
    _, created = await http("POST", "/user", data={"username": "doc", "password": "pw", "timezone": "UTC"})
    status, body = await http("GET", f"/user/{created['id']}")
    assert status == 200
    assert set(body) == {"code", "status", "user"}
    assert set(body["user"]) == DOCUMENTED_USER


async def test_existing_contact_answers_the_standard_success_only(http: Any) -> None:
    """POST /contact for a number on record: the document shows no answer, so only code and status."""
    number = {"phone_number": "+18885554444"}
    _, first = await http("POST", "/contact", data=number)
    assert first["id"].startswith("co:")
    status, again = await http("POST", "/contact", data=number)
    assert (status, again) == (200, {"code": 200, "status": "success"})


async def test_create_contact_finds_the_id_without_an_invented_field(run: Any) -> None:
    """The handler reports the existing contact's id by looking it up, not from an invented answer field."""
    first = await run("create_contact", {"phone_number": "+18885554445"})
    again = await run("create_contact", {"phone_number": "+18885554445"})
    assert again["id"] == first["id"] and again["already_on_record"] is True
    assert "already_on_record" not in first


async def test_check_consent_path_is_a_setting(make_client: Any, sim: PidjSimulator) -> None:
    """check_consent_path (the document's path is garbled) changes the path the handler calls."""
    import datetime

    import structlog

    from handlers.pidj.contacts import check_consent
    from tests.pidj.conftest import MemorySuppressions
    from worker.errors import VendorRejected
    from worker.registry import CommandContext

    client = make_client(check_consent_path="/consent/{group_id}/{contact_id}")
    ctx: CommandContext[Any] = CommandContext(
        command_id="c1",
        type="check_consent",
        account="default",
        attempt=1,
        meta={},
        client=client,
        log=structlog.get_logger("test"),
        first_attempt_at=datetime.datetime.now(datetime.UTC),
        suppressions=MemorySuppressions(),
    )
    with pytest.raises(VendorRejected):  # the simulator serves the path we assumed, not this one
        await check_consent({"contact_id": "co:abc", "group_id": "gr:def"}, ctx)
    assert sim.requests[-1].path == "/api/2020/consent/gr:def/co:abc"


def test_check_consent_path_needs_both_ids() -> None:
    """A check_consent_path without {contact_id} and {group_id} is refused at start-up."""
    from pydantic import ValidationError

    from handlers.pidj.settings import PidjAccount

    with pytest.raises(ValidationError):
        PidjAccount.model_validate(
            {"account_key": "k", "token": "t", "check_consent_path": "/consent/{group_id}"}
        )
