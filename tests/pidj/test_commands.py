"""Each Pidj command against the simulator, through its check and handler."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import pytest

from handlers.pidj.sandbox import PidjSimulator
from handlers.pidj.sandbox_state import (
    NO_NUMBER_GROUP,
    PRIMARY_GROUP,
    PRIMARY_NUMBER,
    SERIES_ID,
    SUPPORT_GROUP,
    SURVEY_ID,
)
from handlers.simulator import Fault
from tests.pidj.conftest import MemorySuppressions, Run
from worker.errors import InvalidPayload, PermanentError, TransientError, VendorRejected, VendorUnavailable

TO = "+18885553333"


def form_of(sim: PidjSimulator, path: str) -> dict[str, list[str]]:
    """The form body of the last request to ``path``."""
    request = [r for r in sim.requests if r.path == "/api/2020" + path][-1]
    return parse_qs(request.body.decode(), keep_blank_values=True)


class TestSendText:
    async def test_sent_from_number_as_e164(self, run: Run, sim: PidjSimulator) -> None:
        """A formatted number is sent as E.164; the result has Pidj's message and no truncation."""
        result = await run(
            "send_text", {"to_number": "+1 888-555-3333", "from_number": PRIMARY_NUMBER, "text_body": "hi"}
        )
        assert result == {
            "status": "success",
            "message": "Text sent.",
            "to_number": TO,
            "from_number": PRIMARY_NUMBER,
            "truncated": False,
            "encoding": "GSM-7",
            "segments": 1,
        }
        assert form_of(sim, "/send") == {
            "to_number": [TO],
            "from_number": [PRIMARY_NUMBER],
            "text_body": ["hi"],
        }

    async def test_curly_quote_makes_ucs2_unless_replaced(self, run: Run, sim: PidjSimulator) -> None:
        """One curly apostrophe turns a text into UCS-2; replace_lookalikes sends it as GSM-7 instead."""
        text = "We\u2019re open " + "x" * 80
        as_is = await run("send_text", {"to_number": TO, "from_number": PRIMARY_NUMBER, "text_body": text})
        assert (as_is["encoding"], as_is["segments"]) == ("UCS-2", 2)
        replaced = await run(
            "send_text",
            {"to_number": TO, "from_number": PRIMARY_NUMBER, "text_body": text, "replace_lookalikes": True},
        )
        assert (replaced["encoding"], replaced["segments"]) == ("GSM-7", 1)
        assert form_of(sim, "/send")["text_body"] == ["We're open " + "x" * 80]

    async def test_sent_from_group(self, run: Run, sim: PidjSimulator) -> None:
        """group_id is sent instead of from_number; allow_truncation is not sent to Pidj."""
        result = await run(
            "send_text",
            {"to_number": TO, "group_id": SUPPORT_GROUP, "text_body": "y" * 1700, "allow_truncation": True},
        )
        assert result["truncated"] is True
        assert set(form_of(sim, "/send")) == {"to_number", "group_id", "text_body"}

    async def test_group_without_number_fails(self, run: Run, sim: PidjSimulator) -> None:
        """The document's 'failure status' for a group without a number ends the command failed."""
        with pytest.raises(VendorRejected) as caught:
            await run("send_text", {"to_number": TO, "group_id": NO_NUMBER_GROUP, "text_body": "hi"})
        assert caught.value.code == "vendor_failure"
        assert sim.effects("text") == []

    async def test_opted_out_number_not_sent(
        self, run: Run, sim: PidjSimulator, suppressions: MemorySuppressions
    ) -> None:
        """A suppressed number ends recipient_opted_out and Pidj is not called."""
        await suppressions.add("default", TO, reason="opt-out", source="test", now=0)
        with pytest.raises(PermanentError) as caught:
            await run(
                "send_text",
                {"to_number": "+1 888 555 3333", "from_number": PRIMARY_NUMBER, "text_body": "hi"},
            )
        assert caught.value.code == "recipient_opted_out"
        assert sim.requests == []

    async def test_unreadable_suppression_list_sends_nothing(
        self, run: Run, sim: PidjSimulator, suppressions: MemorySuppressions
    ) -> None:
        """If the list cannot be read the command is retryable (not applied) and Pidj is not called."""

        async def broken(account: str, number: str) -> bool:
            raise ConnectionError("store down")

        suppressions.contains = broken  # type: ignore[method-assign]
        with pytest.raises(TransientError) as caught:
            await run("send_text", {"to_number": TO, "from_number": PRIMARY_NUMBER, "text_body": "hi"})
        assert caught.value.code == "suppression_list_unavailable" and caught.value.maybe_applied is False
        assert sim.requests == []

    async def test_opt_out_is_per_account(self, run: Run, suppressions: MemorySuppressions) -> None:
        """An opt-out on another account does not block this one."""
        await suppressions.add("other", TO, reason="opt-out", source="test", now=0)
        await run("send_text", {"to_number": TO, "from_number": PRIMARY_NUMBER, "text_body": "hi"})

    async def test_long_text_rejected_before_sending(self, run: Run, sim: PidjSimulator) -> None:
        """1,601 characters are refused at /payload/text_body; nothing is sent."""
        with pytest.raises(InvalidPayload) as caught:
            await run("send_text", {"to_number": TO, "from_number": PRIMARY_NUMBER, "text_body": "x" * 1601})
        assert caught.value.path == "/payload/text_body"
        assert sim.requests == []


class TestUsers:
    async def test_user_lifecycle(self, run: Run, sim: PidjSimulator) -> None:
        """create, get, update, pause, unpause, delete, recover, SSO URL: each answers and acts."""
        created = await run(
            "create_user",
            {
                "username": "ann",
                "password": "pw",
                "roles": ["agent", "manager"],
                "groups": ["primary", SUPPORT_GROUP],
            },
        )
        user_id = created["id"]
        assert user_id.startswith("us:") and created["message"] == "User created."
        assert form_of(sim, "/user")["roles"] == ["agent|manager"]
        assert form_of(sim, "/user")["groups"] == [f"primary|{SUPPORT_GROUP}"]
        user = (await run("get_user", {"id": user_id}))["user"]
        assert user["username"] == "ann" and "password" not in user
        await run("update_user", {"id": user_id, "first_name": "Ann", "email_address": ""})
        assert sim.state.users[user_id]["first_name"] == "Ann"
        assert (await run("pause_user", {"id": user_id}))["paused"] is True
        assert (await run("unpause_user", {"id": user_id}))["paused"] is False
        await run("delete_user", {"id": user_id})
        assert sim.state.users[user_id]["deleted"] is True
        await run("recover_user", {"id": user_id})
        assert sim.state.users[user_id]["deleted"] is False
        sso = await run("create_sso_url", {"user_uuid": user_id, "next_url": "https://example.com/x"})
        assert sso["url"].startswith("https://") and sso["expires_in_seconds"] == 60
        assert base64.b64decode(form_of(sim, "/sso/url")["next"][0]) == b"https://example.com/x"

    async def test_duplicate_username_fails(self, run: Run) -> None:
        """A second user with the same username is refused by Pidj (vendor_failure)."""
        await run("create_user", {"username": "bob", "password": "pw"})
        with pytest.raises(VendorRejected) as caught:
            await run("create_user", {"username": "bob", "password": "pw2"})
        assert caught.value.code == "vendor_failure"

    async def test_unknown_user_is_not_found(self, run: Run) -> None:
        """GET of an unknown user id fails not_found."""
        with pytest.raises(VendorRejected) as caught:
            await run("get_user", {"id": "us:00000000-0000-0000-0000-000000000000"})
        assert caught.value.code == "not_found"

    async def test_sso_by_external_id(self, run: Run) -> None:
        """An SSO URL can be made from the external id saved on the user."""
        await run("create_user", {"username": "cy", "password": "pw", "external_id": "ext-9"})
        assert (await run("create_sso_url", {"external_id": "ext-9"}))["url"]

    async def test_task(self, run: Run, sim: PidjSimulator) -> None:
        """initiate_task returns the task id and records one task."""
        result = await run("initiate_task", {"channel": "ticket", "group_id": PRIMARY_GROUP, "subject": "s"})
        assert result["task"].startswith("ci:")
        assert len(sim.effects("task")) == 1


class TestContacts:
    async def test_contact_lifecycle(self, run: Run, sim: PidjSimulator) -> None:
        """create (with address), get, by phone, update, list, delete."""
        payload = {
            "phone_number": "+1 801 555 1111",
            "first_name": "John",
            "home_street_1": "1 Main",
            "home_postal": "84101",
        }
        contact_id = (await run("create_contact", payload))["id"]
        assert form_of(sim, "/contact")["phone_number"] == ["+18015551111"]
        assert (await run("get_contact", {"id": contact_id}))["contact"]["first_name"] == "John"
        by_phone = await run("get_contact_by_phone", {"phone_number": "+18015551111"})
        assert by_phone["contact"]["id"] == contact_id
        await run("update_contact", {"id": contact_id, "last_name": "Doe", "home_state": "UT"})
        assert sim.state.contacts[contact_id]["home_state"] == "UT"
        assert [c["id"] for c in (await run("list_contacts", {}))["contacts"]] == [contact_id]
        await run("delete_contact", {"id": contact_id})
        with pytest.raises(VendorRejected):
            await run("get_contact", {"id": contact_id})

    async def test_delete_retry_of_a_deleted_contact_succeeds(self, run: Run) -> None:
        """not_found on a retry (attempt 2) means an earlier attempt deleted it; on attempt 1 it fails."""
        contact_id = (await run("create_contact", {"phone_number": TO}))["id"]
        await run("delete_contact", {"id": contact_id})
        again = await run("delete_contact", {"id": contact_id}, attempt=2)
        assert again["already_deleted"] is True
        with pytest.raises(VendorRejected):
            await run("delete_contact", {"id": contact_id}, attempt=1)

    async def test_existing_contact_is_left_alone(self, run: Run, sim: PidjSimulator) -> None:
        """Creating a contact whose number exists changes nothing and returns the same id."""
        first = await run("create_contact", {"phone_number": TO, "first_name": "A"})
        again = await run("create_contact", {"phone_number": TO, "first_name": "B"})
        assert again["id"] == first["id"]
        assert sim.state.contacts[first["id"]]["first_name"] == "A"
        assert len(sim.effects("contact_created")) == 1

    async def test_consent(self, run: Run, sim: PidjSimulator) -> None:
        """check_consent says needed, send_consent_text sends once, then not needed."""
        contact_id = (await run("create_contact", {"phone_number": TO}))["id"]
        pair = {"contact_id": contact_id, "group_id": PRIMARY_GROUP}
        assert (await run("check_consent", pair))["needed"] is True
        assert (await run("send_consent_text", pair))["sent"] is True
        assert (await run("check_consent", pair))["needed"] is False
        again = await run("send_consent_text", pair)  # Pidj reports 'failure': not due, not an error
        assert again["sent"] is False and again["message"]
        assert len(sim.effects("consent_text")) == 1
        path = f"/api/2020/contact/{contact_id}/{PRIMARY_GROUP}/check-consent"
        assert any(r.path == path for r in sim.requests)

    async def test_consent_text_refused_for_opted_out_contact(
        self, run: Run, sim: PidjSimulator, suppressions: MemorySuppressions
    ) -> None:
        """A consent request is a text: not sent to an opted-out number."""
        contact_id = (await run("create_contact", {"phone_number": TO}))["id"]
        await suppressions.add("default", TO, reason="opt-out", source="test", now=0)
        with pytest.raises(PermanentError) as caught:
            await run("send_consent_text", {"contact_id": contact_id, "group_id": PRIMARY_GROUP})
        assert caught.value.code == "recipient_opted_out"
        assert sim.effects("consent_text") == []


class TestCatalog:
    async def test_lists_and_authorization(self, run: Run) -> None:
        """Groups, series, surveys and the authorization check answer with their lists."""
        groups = (await run("list_groups", {}))["groups"]
        assert {g["group_id"] for g in groups} >= {PRIMARY_GROUP, NO_NUMBER_GROUP}
        assert (await run("list_series", {}))["series"][0]["series_id"] == SERIES_ID
        assert (await run("list_surveys", {}))["surveys"][0]["survey_id"] == SURVEY_ID
        assert (await run("check_authorization", {}))["message"] == "Authorization successful."

    async def test_series_and_survey(self, run: Run, sim: PidjSimulator) -> None:
        """A number is subscribed to a series and a contact gets a survey."""
        series = {
            "series_id": SERIES_ID,
            "timezone": "America/Denver",
            "to_number": TO,
            "group_id": PRIMARY_GROUP,
        }
        assert (await run("subscribe_series", series))["message"] == "Series subscribe."
        contact_id = sim.state.contact_by_phone(TO)["id"]  # type: ignore[index]
        survey = {"survey_id": SURVEY_ID, "contact_id": contact_id, "from_number": PRIMARY_NUMBER}
        assert (await run("initiate_survey", survey))["message"] == "Survey initiated."
        assert [e.data["to_number"] for e in sim.effects("survey")] == [TO]

    async def test_failed_contact_lookup_is_retryable(self, run: Run, sim: PidjSimulator) -> None:
        """A dropped opt-out lookup (a GET) says 'not applied', so the unsafe survey may be retried."""
        contact_id = (await run("create_contact", {"phone_number": TO}))["id"]
        sim.add_fault(Fault(kind="drop", path_prefix="/api/2020/contact/", method="GET"))
        with pytest.raises(VendorUnavailable) as caught:
            await run(
                "initiate_survey",
                {"survey_id": SURVEY_ID, "contact_id": contact_id, "group_id": PRIMARY_GROUP},
            )
        assert caught.value.maybe_applied is False
        assert sim.effects("survey") == []

    async def test_opted_out_contact_gets_no_survey(
        self, run: Run, sim: PidjSimulator, suppressions: MemorySuppressions
    ) -> None:
        """A contact-addressed survey looks the number up; an opted-out one never reaches Pidj."""
        contact_id = (await run("create_contact", {"phone_number": TO}))["id"]
        await suppressions.add("default", TO, reason="opt-out", source="test", now=0)
        for command_type, payload in [
            (
                "initiate_survey",
                {"survey_id": SURVEY_ID, "contact_id": contact_id, "group_id": PRIMARY_GROUP},
            ),
            (
                "subscribe_series",
                {"series_id": SERIES_ID, "timezone": "UTC", "to_number": TO, "group_id": PRIMARY_GROUP},
            ),
        ]:
            with pytest.raises(PermanentError) as caught:
                await run(command_type, payload)
            assert caught.value.code == "recipient_opted_out"
        assert not [r for r in sim.requests if r.path.endswith(("/survey/initiate", "/series/subscribe"))]
