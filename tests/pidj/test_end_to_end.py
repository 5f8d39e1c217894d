"""Pidj through the real broker: a `switchboard run` worker, the simulator, events on the bus."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from handlers.pidj.sandbox import PidjSimulator
from handlers.pidj.sandbox_state import NO_NUMBER_GROUP, PRIMARY_GROUP, SERIES_ID, SURVEY_ID
from tests.support.amqp import EventTap, publish_command
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

SECRET = "e2e-webhook-secret-0123456789"


@pytest.fixture(scope="module")
def sim() -> Iterator[PidjSimulator]:
    """One simulator for the module, served from a thread."""
    simulator = PidjSimulator(webhook_secret=SECRET)
    with simulator.running_in_thread():
        yield simulator


@pytest.fixture(scope="module")
def worker(sim: PidjSimulator, topology_declared: None) -> Iterator[WorkerProcess]:
    """A worker for Pidj only, pointed at the simulator, serving webhooks."""
    env = {
        "SWITCHBOARD_VENDORS": "pidj",
        "SWITCHBOARD_PIDJ_BASE_URL": sim.api_url,
        "SWITCHBOARD_PIDJ_ACCOUNT_KEY": sim.account_key,
        "SWITCHBOARD_PIDJ_TOKEN": sim.token,
        "SWITCHBOARD_PIDJ_WEBHOOK_SECRET": SECRET,
        "SWITCHBOARD_WEBHOOKS": "true",
    }
    with WorkerProcess(env) as process:
        yield process


@pytest.fixture
def tap(broker: None, worker: WorkerProcess) -> Iterator[EventTap]:
    with EventTap() as events:
        yield events


def webhook_url(worker: WorkerProcess, secret: str = SECRET) -> str:
    return f"http://127.0.0.1:{worker.port}/webhooks/pidj/default/{secret}"


def run(tap: EventTap, command_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Publish one command and return its terminal event."""
    return tap.wait_for(publish_command(command_type, payload), timeout=30)


def succeeded(tap: EventTap, command_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    event = run(tap, command_type, payload)
    assert event["status"] == "succeeded", event
    result: dict[str, Any] = event["result"]
    return result


def sends_to(sim: PidjSimulator, number: str) -> list[str]:
    """Every request that could text ``number`` (send, series, survey)."""
    texting = ("/api/2020/send", "/api/2020/series/subscribe", "/api/2020/survey/initiate")
    return [
        r.path for r in sim.requests if r.path in texting and number.encode() in r.body.replace(b"%2B", b"+")
    ]


def test_send_text_succeeds_with_pidj_message(tap: EventTap, sim: PidjSimulator) -> None:
    """The runtime's acceptance payload succeeds and the result carries Pidj's message."""
    result = succeeded(
        tap, "send_text", {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "hi"}
    )
    assert result["message"] == "Text sent."
    assert any(e.data["to_number"] == "+18885553333" for e in sim.effects("text"))


def test_group_without_number_fails_with_vendor_message(tap: EventTap) -> None:
    """HTTP 200 with status failure ends the command failed (vendor_failure), not succeeded."""
    event = run(
        tap, "send_text", {"to_number": "+18885553333", "group_id": NO_NUMBER_GROUP, "text_body": "hi"}
    )
    assert event["status"] == "failed"
    assert event["error"]["code"] == "vendor_failure"


def test_too_long_text_is_rejected_and_not_sent(tap: EventTap, sim: PidjSimulator) -> None:
    """1,601 characters without allow_truncation is rejected before Pidj is called."""
    before = len(sim.requests)
    event = run(
        tap, "send_text", {"to_number": "+18885553333", "group_id": PRIMARY_GROUP, "text_body": "x" * 1601}
    )
    assert event["status"] == "rejected"
    assert event["error"]["details"]["path"] == "/payload/text_body"
    assert len(sim.requests) == before


def test_user_commands(tap: EventTap) -> None:
    """create/get/update/pause/unpause/delete/recover user and an SSO URL, through the bus."""
    created = succeeded(tap, "create_user", {"username": "e2e-user", "password": "pw", "roles": ["agent"]})
    user_id = created["id"]
    assert succeeded(tap, "get_user", {"id": user_id})["user"]["username"] == "e2e-user"
    succeeded(tap, "update_user", {"id": user_id, "first_name": "Ann", "groups": ["Primary", PRIMARY_GROUP]})
    assert succeeded(tap, "pause_user", {"id": user_id})["paused"] is True
    assert succeeded(tap, "unpause_user", {"id": user_id})["paused"] is False
    succeeded(tap, "delete_user", {"id": user_id})
    succeeded(tap, "recover_user", {"id": user_id})
    sso = succeeded(tap, "create_sso_url", {"user_uuid": user_id, "next_url": "https://example.com/after"})
    assert sso["url"].startswith("https://")
    duplicate = run(tap, "create_user", {"username": "e2e-user", "password": "pw"})
    assert duplicate["status"] == "failed" and duplicate["error"]["code"] == "vendor_failure"


def test_contact_commands(tap: EventTap) -> None:
    """create/get/by-phone/update/consent/list/delete contact, through the bus."""
    number = "+18015550123"
    contact_id = succeeded(
        tap, "create_contact", {"phone_number": number, "first_name": "Jo", "group": "Primary"}
    )["id"]
    assert (
        succeeded(tap, "create_contact", {"phone_number": number, "first_name": "Other"})["id"] == contact_id
    )
    assert succeeded(tap, "get_contact", {"id": contact_id})["contact"]["first_name"] == "Jo"
    assert (
        succeeded(tap, "get_contact_by_phone", {"phone_number": "+1 801 555 0123"})["contact"]["id"]
        == contact_id
    )
    succeeded(tap, "update_contact", {"id": contact_id, "home_state": "UT", "home_postal": "84101"})
    assert (
        succeeded(tap, "check_consent", {"contact_id": contact_id, "group_id": PRIMARY_GROUP})["needed"]
        is True
    )
    assert (
        succeeded(tap, "send_consent_text", {"contact_id": contact_id, "group_id": PRIMARY_GROUP})["sent"]
        is True
    )
    assert (
        succeeded(tap, "check_consent", {"contact_id": contact_id, "group_id": PRIMARY_GROUP})["needed"]
        is False
    )
    assert any(c["id"] == contact_id for c in succeeded(tap, "list_contacts", {})["contacts"])
    succeeded(tap, "delete_contact", {"id": contact_id})
    missing = run(tap, "get_contact", {"id": contact_id})
    assert missing["status"] == "failed" and missing["error"]["code"] == "not_found"


def test_catalog_task_series_survey_commands(tap: EventTap, sim: PidjSimulator) -> None:
    """Lists, the authorization check, a task, a series subscription and a survey, through the bus."""
    assert any(g["group_id"] == PRIMARY_GROUP for g in succeeded(tap, "list_groups", {})["groups"])
    assert succeeded(tap, "list_series", {})["series"][0]["series_id"] == SERIES_ID
    assert succeeded(tap, "list_surveys", {})["surveys"][0]["survey_id"] == SURVEY_ID
    assert succeeded(tap, "check_authorization", {})["message"] == "Authorization successful."
    assert succeeded(tap, "initiate_task", {"channel": "ticket", "subject": "e2e"})["task"].startswith("ci:")
    series = {
        "series_id": SERIES_ID,
        "timezone": "America/Denver",
        "to_number": "+18885553334",
        "group_id": PRIMARY_GROUP,
    }
    assert succeeded(tap, "subscribe_series", series)["message"] == "Series subscribe."
    survey = {"survey_id": SURVEY_ID, "to_number": "+18885553334", "from_number": "+18885552222"}
    assert succeeded(tap, "initiate_survey", survey)["message"] == "Survey initiated."
    assert sim.effects("series_subscription") and sim.effects("survey")


def test_webhook_arrives_on_the_bus(tap: EventTap, sim: PidjSimulator, worker: WorkerProcess) -> None:
    """A webhook fired by the simulator is published as pidj.webhook.<event>, unknown fields kept."""
    body = {"event": "contact-created", "contact": {"uuid": "co:e2e", "phone": "+18005552424"}, "extra": [1]}
    assert sim.fire_webhook_sync(webhook_url(worker), body) == 200
    event = tap.wait_for_routing_key("pidj.webhook.contact-created")
    assert event["type"] == "pidj.webhook" and event["account"] == "default"
    assert event["data"] == body


def test_webhook_with_wrong_secret_is_401_and_publishes_nothing(
    tap: EventTap, sim: PidjSimulator, worker: WorkerProcess
) -> None:
    """A wrong secret gets 401; nothing reaches the bus (checked by a following good webhook)."""
    assert (
        sim.fire_webhook_sync(webhook_url(worker, "wrong-secret-0123456789"), {"event": "e2e-forged"}) == 401
    )
    assert sim.fire_webhook_sync(webhook_url(worker), {"event": "e2e-marker"}) == 200
    tap.wait_for_routing_key("pidj.webhook.e2e-marker")
    assert not [m for m, _, _ in tap.raw if m.routing_key == "pidj.webhook.e2e-forged"]


def test_opted_out_number_is_never_sent_to(tap: EventTap, sim: PidjSimulator, worker: WorkerProcess) -> None:
    """After an opt-out webhook, texting commands fail recipient_opted_out, unsent; opt-in undoes it."""
    number = "+18885559876"
    opt_out = {"event": "opt-out", "contact": {"uuid": "co:e2e-out", "phone": number}}
    assert sim.fire_webhook_sync(webhook_url(worker), opt_out) == 200
    contact_id = succeeded(tap, "create_contact", {"phone_number": number})["id"]
    attempts = [
        ("send_text", {"to_number": number, "group_id": PRIMARY_GROUP, "text_body": "hello"}),
        (
            "subscribe_series",
            {"series_id": SERIES_ID, "timezone": "UTC", "to_number": number, "group_id": PRIMARY_GROUP},
        ),
        ("initiate_survey", {"survey_id": SURVEY_ID, "contact_id": contact_id, "group_id": PRIMARY_GROUP}),
        ("send_consent_text", {"contact_id": contact_id, "group_id": PRIMARY_GROUP}),
    ]
    for command_type, payload in attempts:
        event = run(tap, command_type, payload)
        assert event["status"] == "failed" and event["error"]["code"] == "recipient_opted_out", command_type
    assert sends_to(sim, number) == []
    assert not [e for e in sim.effects("consent_text") if e.data["to_number"] == number]
    opt_in = {"event": "opt-in", "contact": {"uuid": "co:e2e-out", "phone": number}}
    assert sim.fire_webhook_sync(webhook_url(worker), opt_in) == 200
    succeeded(tap, "send_text", {"to_number": number, "group_id": PRIMARY_GROUP, "text_body": "welcome back"})
    assert sends_to(sim, number) == ["/api/2020/send"]


def test_builtin_sandbox_takes_the_acceptance_text(broker: None) -> None:
    """`switchboard run --sandbox` with no Pidj credentials sends the runtime's acceptance payload."""
    # The module's worker (its own SQLite store) still consumes switchboard.pidj: a second store is intended.
    env = {
        "SWITCHBOARD_VENDORS": "pidj",
        "SWITCHBOARD_SANDBOX": "true",
        "SWITCHBOARD_ALLOW_UNSHARED_STORE": "true",
    }
    with WorkerProcess(env), EventTap() as tap:
        payload = {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "hi"}
        assert succeeded(tap, "send_text", payload)["message"] == "Text sent."
