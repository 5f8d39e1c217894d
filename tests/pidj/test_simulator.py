"""The simulator is strict where the document is, and gives tests what they need."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from handlers.pidj.sandbox import SANDBOX_ACCOUNT_KEY, SANDBOX_TOKEN, PidjSimulator, serve, start_sandbox
from handlers.pidj.sandbox_state import (
    NO_NUMBER_GROUP,
    PRIMARY_GROUP,
    PRIMARY_NUMBER,
    SERIES_ID,
    SUPPORT_GROUP,
)
from tests.support.worker import free_port

AUTH = "Basic " + base64.b64encode(f"{SANDBOX_ACCOUNT_KEY}:{SANDBOX_TOKEN}".encode()).decode()
FORM = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": AUTH}
SEND = {"to_number": "+18885553333", "from_number": PRIMARY_NUMBER, "text_body": "hi"}


@pytest.fixture
async def http(sim: PidjSimulator) -> AsyncIterator[Any]:
    """``await http(method, path, **kwargs) -> (status, json)`` against the simulator's API."""
    async with aiohttp.ClientSession() as session:

        async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            async with session.request(method, sim.api_url + path, **kwargs) as answer:
                return answer.status, await answer.json(content_type=None)

        yield call


async def test_wrong_or_missing_auth_is_401(http: Any, sim: PidjSimulator) -> None:
    """No Authorization, a wrong token, or a Bearer scheme gets 401 and no text is sent."""
    wrong = "Basic " + base64.b64encode(f"{SANDBOX_ACCOUNT_KEY}:nope".encode()).decode()
    for headers in ({}, {"Authorization": wrong}, {"Authorization": "Bearer " + SANDBOX_TOKEN}):
        status, body = await http(
            "POST", "/send", data=SEND, headers={**FORM, **headers} if headers else None
        )
        assert status == 401 and body["status"] == "error"
    assert sim.effects("text") == []


async def test_json_body_is_refused(http: Any, sim: PidjSimulator) -> None:
    """A JSON body (not form-encoded) gets 415 and nothing is sent."""
    status, _ = await http("POST", "/send", json=SEND, headers={"Authorization": AUTH})
    assert status == 415
    assert sim.effects("text") == []


async def test_unknown_and_repeated_fields_are_400(http: Any) -> None:
    """An unknown field or a field given twice is refused."""
    assert (await http("POST", "/send", data={**SEND, "allow_truncation": "true"}, headers=FORM))[0] == 400
    repeated = "to_number=%2B18885553333&to_number=%2B18885553334&from_number=%2B18885552222&text_body=x"
    assert (await http("POST", "/send", data=repeated, headers=FORM))[0] == 400


async def test_non_e164_and_bad_prefix_are_400(http: Any) -> None:
    """A formatted number or a group id without gr: is refused: the vendor wants E.164 and prefixes."""
    assert (await http("POST", "/send", data={**SEND, "to_number": "+1 888 555 3333"}, headers=FORM))[
        0
    ] == 400
    data = {"to_number": "+18885553333", "group_id": PRIMARY_GROUP[3:], "text_body": "x"}
    assert (await http("POST", "/send", data=data, headers=FORM))[0] == 400


async def test_both_senders_is_400(http: Any) -> None:
    """from_number and group_id together are refused (our reading: exactly one)."""
    status, _ = await http("POST", "/send", data={**SEND, "group_id": PRIMARY_GROUP}, headers=FORM)
    assert status == 400


async def test_group_without_number_is_200_failure(http: Any, sim: PidjSimulator) -> None:
    """The document's behaviour: HTTP 200 with status failure, and no text."""
    data = {"to_number": "+18885553333", "group_id": NO_NUMBER_GROUP, "text_body": "x"}
    status, body = await http("POST", "/send", data=data, headers=FORM)
    assert (status, body["status"]) == (200, "failure")
    assert sim.effects("text") == []


async def test_long_text_is_truncated_like_the_vendor(http: Any, sim: PidjSimulator) -> None:
    """Over 1,600 characters the simulator truncates, as the document says Pidj does."""
    await http("POST", "/send", data={**SEND, "text_body": "z" * 1700}, headers=FORM)
    effect = sim.effects("text")[0]
    assert effect.data["truncated"] is True and len(effect.data["text_body"]) == 1600


async def test_contact_by_phone_reads_escaped_plus(http: Any) -> None:
    """/contact/by-phone/%2B1... and /contact/by-phone/+1... name the same contact."""
    await http("POST", "/contact", data={"phone_number": "+18015551111"}, headers=FORM)
    for path in ("/contact/by-phone/%2B18015551111", "/contact/by-phone/+18015551111"):
        status, body = await http("GET", path, headers=FORM)
        assert status == 200 and body["contact"]["phone_number"] == "+18015551111"


async def test_unknown_route_is_json_404(http: Any) -> None:
    """An unknown API path answers 404 in Pidj's shape."""
    status, body = await http("GET", "/nope", headers=FORM)
    assert status == 404 and body["status"] == "error"


async def test_reset_restores_the_seed(http: Any, sim: PidjSimulator) -> None:
    """/_sandbox/reset forgets users and side effects."""
    await http("POST", "/user", data={"username": "u", "password": "p"}, headers=FORM)
    async with aiohttp.ClientSession() as session, session.post(sim.base_url + "/_sandbox/reset") as answer:
        assert answer.status == 200
    assert sim.state.users == {} and sim.side_effects == []


async def test_fire_webhook_posts_json(sim: PidjSimulator) -> None:
    """fire_webhook and the control route POST the body as JSON and return the receiver's status."""
    received: list[Any] = []

    async def receiver(request: web.Request) -> web.Response:
        received.append((request.content_type, await request.json()))
        return web.json_response({}, status=202)

    app = web.Application()
    app.router.add_post("/hook", receiver)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        assert await sim.fire_webhook(f"http://127.0.0.1:{port}/hook", {"event": "opt-out"}) == 202
        status = await asyncio.to_thread(
            sim.fire_webhook_sync, f"http://127.0.0.1:{port}/hook", {"event": "x"}
        )
        assert status == 202
        spec = {"url": f"http://127.0.0.1:{port}/hook", "body": {"event": "y"}}
        async with (
            aiohttp.ClientSession() as session,
            session.post(sim.base_url + "/_sandbox/pidj/webhook", json=spec) as a,
        ):
            assert (await a.json())["status"] == 202
    finally:
        await runner.cleanup()
    assert received == [
        ("application/json", {"event": "opt-out"}),
        ("application/json", {"event": "x"}),
        ("application/json", {"event": "y"}),
    ]


async def test_start_sandbox_gives_a_working_account() -> None:
    """start_sandbox returns account settings that pass the authorization check."""
    sandbox = await start_sandbox()
    try:
        credentials = f"{sandbox.account['account_key']}:{sandbox.account['token']}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode()
        async with aiohttp.ClientSession() as session:
            url = sandbox.account["base_url"] + "/authorization-check"
            async with session.get(url, headers={"Authorization": authorization}) as answer:
                assert answer.status == 200
                assert (await answer.json())["status"] == "success"
        assert len(sandbox.account["webhook_secret"]) >= 16
    finally:
        await sandbox.stop()


async def test_serve_runs_until_cancelled() -> None:
    """serve() answers on the given port until its task is cancelled."""
    port = free_port()
    task = asyncio.create_task(serve("127.0.0.1", port))
    url = f"http://127.0.0.1:{port}/api/2020/authorization-check"
    status = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # up to ~5 s for the server to bind
            try:
                async with session.get(url, headers={"Authorization": AUTH}) as answer:
                    status = answer.status
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert status == 200


async def test_series_refuses_a_group_outside_the_series(http: Any, sim: PidjSimulator) -> None:
    """Subscribing from a group the series is not assigned to is a 200 failure, nothing subscribed."""
    data = {"series_id": SERIES_ID, "timezone": "UTC", "to_number": "+18885553333", "group_id": SUPPORT_GROUP}
    status, body = await http("POST", "/series/subscribe", data=data, headers=FORM)
    assert (status, body["status"]) == (200, "failure")
    missing_zone = {**data, "group_id": PRIMARY_GROUP, "timezone": ""}
    assert (await http("POST", "/series/subscribe", data=missing_zone, headers=FORM))[0] == 400
    assert sim.effects("series_subscription") == []


async def test_pause_twice_pauses_once(http: Any, sim: PidjSimulator) -> None:
    """'Users will only be paused if they are not currently paused': one side effect for two calls."""
    _, created = await http("POST", "/user", data={"username": "p", "password": "x"}, headers=FORM)
    for _ in range(2):
        status, body = await http("POST", f"/user/{created['id']}/pause", headers=FORM)
        assert (status, body["paused"]) == (200, True)
    assert len(sim.effects("user_paused")) == 1


async def test_invalid_state_is_discarded_like_the_vendor(http: Any, sim: PidjSimulator) -> None:
    """An unknown state or country is silently discarded by Pidj (why the worker refuses them first)."""
    data = {
        "phone_number": "+18015551111",
        "home_state": "Utah",
        "home_country": "Atlantis",
        "home_city": "Provo",
    }
    _, created = await http("POST", "/contact", data=data, headers=FORM)
    contact = sim.state.contacts[created["id"]]
    assert contact["home_city"] == "Provo" and "home_state" not in contact and "home_country" not in contact
