"""Peerly handlers against the simulator, called directly with a hand-built context."""

from __future__ import annotations

import asyncio
import copy
import datetime
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from handlers import build_registry
from handlers.peerly.client import MAX_UPLOAD_BYTES, PeerlyClient
from handlers.peerly.jobs import JOB_EXAMPLE, assign_list, create_job
from handlers.peerly.lists import check_list_status, upload_list
from handlers.peerly.media import create_media
from handlers.peerly.sandbox import PeerlySimulator
from handlers.peerly.validation import check_create_job
from handlers.simulator import Fault
from tests.peerly.conftest import P2P_UPLOAD, ClientFactory, make_ctx
from tests.peerly.test_peerly_validation import UPLOAD_TABLE
from worker.errors import (
    InvalidPayload,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    VendorRejected,
    VendorUnavailable,
)
from worker.registry import Continue

registry = build_registry()


async def run_upload(
    payload: dict[str, Any], client: PeerlyClient, *, first_attempt_at: datetime.datetime | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Drive upload_list as the runtime does: (result, progress events, handler calls)."""
    progress: list[dict[str, Any]] = []
    outcome = await upload_list(payload, make_ctx(client, first_attempt_at=first_attempt_at))
    calls = 1
    while isinstance(outcome, Continue):
        assert calls < 100, "upload_list never finished"
        if outcome.progress is not None:
            progress.append(outcome.progress)
        await asyncio.sleep(min(outcome.after_seconds, 0.1))
        outcome = await upload_list(
            payload, make_ctx(client, state=copy.deepcopy(outcome.state), first_attempt_at=first_attempt_at)
        )
        calls += 1
    return outcome, progress, calls


def test_commands_are_registered_with_their_safety() -> None:
    """The five Peerly commands are registered; only check_list_status is safe to repeat; none resends on reconcile."""
    specs = {t: registry.commands[t] for t in registry.types_of("peerly")}
    assert {t: s.safe_to_repeat for t, s in specs.items()} == {
        "upload_list": False,
        "check_list_status": True,
        "create_job": False,
        "assign_list": False,
        "create_media": False,
    }
    assert specs["assign_list"].reconcile is None
    assert registry.vendors["peerly"].start_sandbox is not None


def _created_job_id(sim: PeerlySimulator) -> str:
    """The id of the last job made, from the simulator's record (Peerly's answer has none)."""
    return str(sim.effects("job_created")[-1].data["job_id"])


async def test_create_job(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """create_job sends the document's JSON; with the documented answer the result says the id is unknown."""
    result = await create_job(copy.deepcopy(JOB_EXAMPLE) | {"account_id": "12345678"}, make_ctx(client))
    assert result["job_id"] is None and result["job_id_known"] is False
    assert "no job id" in result["job_id_hint"] and "name" in result["job_id_hint"]
    assert result["name"] == "01 Job Example" and result["template_count"] == 2
    sent = sim.jobs[_created_job_id(sim)].body
    assert sent["did_state"] == "FL" and sent["templates"][0]["advanced"]["media"]["media_type"] == "VIDEO"
    assert len(sim.effects("job_created")) == 1
    answer = next(r for r in sim.requests if r.path == "/api/1to1/jobs").answered
    assert answer == 201
    assert sim.jobs[_created_job_id(sim)].answer().keys() == {"agents", "name", "status", "templates"}
    assert result["agents"] == []  # the document shows agents only as []: no entry shape is invented


async def test_create_job_uses_account_setting(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """Without account_id in the payload, the account's default id is sent."""
    payload = {k: v for k, v in copy.deepcopy(JOB_EXAMPLE).items() if k != "account_id"}
    await create_job(payload, make_ctx(client))
    assert sim.jobs[_created_job_id(sim)].account_id == "12345678"


async def test_missing_account_id_is_invalid_payload(make_client: ClientFactory) -> None:
    """No account_id in the payload and none configured: InvalidPayload at /payload/account_id."""
    client = make_client(account_id=None)
    payload = {k: v for k, v in copy.deepcopy(JOB_EXAMPLE).items() if k != "account_id"}
    with pytest.raises(InvalidPayload) as caught:
        await create_job(payload, make_ctx(client))
    assert caught.value.path == "/payload/account_id"


async def test_create_job_refused_carries_vendor_text(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """A 400 from Peerly becomes VendorRejected with Peerly's own message."""
    with pytest.raises(VendorRejected) as caught:
        await create_job(copy.deepcopy(JOB_EXAMPLE) | {"account_id": "99999999"}, make_ctx(client))
    assert caught.value.details["http_status"] == 400
    assert "access to this account" in caught.value.details["vendor_error"]
    assert sim.effects("job_created") == []


async def test_assign_list(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """assign_list appends an ACTIVE list to a job and returns its phone_lists."""
    job_id, list_id = sim.add_job(), sim.add_active_list()
    result = await assign_list({"job_id": job_id, "list_id": list_id}, make_ctx(client))
    assert result == {
        "job_id": job_id,
        "list_id": list_id,
        "phone_lists": [list_id],
        "list_in_job": True,
        "duplicate_appended": False,
    }
    assert sim.job_lists(job_id) == [list_id]


async def test_create_job_reads_id_when_peerly_sends_one(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """Should Peerly's answer carry an id after all, the result gives it and says it is known."""
    body = {"id": "AbC123", "agents": [], "name": "n", "status": "active", "templates": []}
    sim.answer_with("POST", "/api/1to1/jobs", 201, body)
    result = await create_job(copy.deepcopy(JOB_EXAMPLE) | {"account_id": "12345678"}, make_ctx(client))
    assert result["job_id"] == "AbC123" and result["job_id_known"] is True and "job_id_hint" not in result


async def test_create_job_single_template_without_is_default(
    sim: PeerlySimulator, client: PeerlyClient
) -> None:
    """One template without is_default passes the check and the simulator, and the job is created."""
    payload = {
        "account_id": "12345678",
        "name": "One template",
        "did_state": "NY",
        "templates": [{"title": "Hello", "text": "Hi {first_name}"}],
    }
    result = await create_job(check_create_job(payload), make_ctx(client))
    assert result["template_count"] == 1
    assert len(sim.effects("job_created")) == 1


@pytest.mark.parametrize("is_default", [False, True])
async def test_create_job_single_template_with_is_default_given(
    sim: PeerlySimulator, client: PeerlyClient, is_default: bool
) -> None:
    """A lone template is the default whatever is_default says ("defaults to false"): accepted, job created."""
    payload = {
        "account_id": "12345678",
        "name": "One template",
        "did_state": "NY",
        "templates": [{"title": "Hello", "text": "Hi {first_name}", "is_default": is_default}],
    }
    result = await create_job(check_create_job(payload), make_ctx(client))
    assert result["template_count"] == 1
    assert len(sim.effects("job_created")) == 1


async def test_simulator_appends_a_list_assigned_twice(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """As documented ("appends"), a second assign of the same list lists it twice; the result says so."""
    job_id, list_id = sim.add_job(), sim.add_active_list()
    await assign_list({"job_id": job_id, "list_id": list_id}, make_ctx(client))
    again = await assign_list({"job_id": job_id, "list_id": list_id}, make_ctx(client))
    assert sim.job_lists(job_id) == [list_id, list_id]
    assert again["duplicate_appended"] is True


def test_assign_list_has_no_reconcile_that_calls_again() -> None:
    """assign_list is unsafe and has no reconcile: a crash mid-call ends outcome_unknown, never a second append."""
    spec = registry.commands["assign_list"]
    assert spec.safe_to_repeat is False and spec.reconcile is None


async def test_assign_list_unknown_job_is_rejected(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """Assigning to a job Peerly does not know is VendorRejected with its text (from the Error key)."""
    with pytest.raises(VendorRejected) as caught:
        await assign_list({"job_id": "nope", "list_id": sim.add_active_list()}, make_ctx(client))
    assert caught.value.details["vendor_error"] == "Job not found"


async def test_check_list_status(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """check_list_status reports the list's state and, once ACTIVE, its list_id."""
    list_id = sim.add_active_list()
    token = next(t for t, e in sim.lists.items() if e.list_id == list_id)
    result = await check_list_status({"list_status_token": token}, make_ctx(client))
    assert result == {"list_status_token": token, "list_state": "ACTIVE", "list_id": list_id, "active": True}


async def test_check_list_status_pending(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """A list still processing has no list_id and is not active."""
    sim.list_active_after = 60
    outcome = await upload_list(copy.deepcopy(P2P_UPLOAD), make_ctx(client))
    assert isinstance(outcome, Continue)
    result = await check_list_status(
        {"list_status_token": outcome.state["list_status_token"]}, make_ctx(client)
    )
    assert result["list_state"] == "PENDING" and result["list_id"] is None and result["active"] is False


async def test_upload_followed_to_active_and_assigned(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """upload_list uploads once, polls to ACTIVE, assigns each job once, and the jobs show the list."""
    jobs = [sim.add_job("A"), sim.add_job("B")]
    result, progress, calls = await run_upload({**copy.deepcopy(P2P_UPLOAD), "assign_to_jobs": jobs}, client)
    assert result["list_state"] == "ACTIVE" and result["assigned_jobs"] == jobs
    for job in jobs:
        assert sim.job_lists(job) == [result["list_id"]]
    assert len(sim.effects("list_uploaded")) == 1
    assert len(sim.effects("list_assigned")) == 2
    assert sim.repeated_effects() == {}
    states = [p["list_state"] for p in progress]
    assert states[0] == "PENDING" and len(states) == len(set(states)), states
    assert calls >= 3


async def test_upload_sends_the_documented_form(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """The upload is multipart: account, flags as 0/1/4, a list_map, a text/csv file of 10-digit phones."""
    await upload_list(copy.deepcopy(P2P_UPLOAD), make_ctx(client))
    request = next(r for r in sim.requests if r.path == "/api/phonelists")
    assert request.content_type == "multipart/form-data"
    form = sim.effects("list_uploaded")[0].data["form"]
    assert form["account"] == "12345678" and form["suppress_cell_phones"] == "4"
    assert form["list_map"] == '{"lead_phone":1,"first_name":2}'
    assert b'filename="phone_list.csv"' in request.body and b"Content-Type: text/csv" in request.body
    assert b"2025550143,Ada" in request.body and b"3125550187,Grace" in request.body


async def test_upload_reports_invalid_rows(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """Rows with invalid phones are not sent and are reported by index in progress and result."""
    payload = copy.deepcopy(P2P_UPLOAD)
    payload["rows"].insert(1, {"lead_phone": "12"})
    result, progress, _ = await run_upload(payload, client)
    expected = {"count": 1, "indexes": [1], "indexes_truncated": False}
    assert progress[0]["invalid_rows"] == expected and result["invalid_rows"] == expected
    assert result["rows_sent"] == 2
    assert sim.effects("list_uploaded")[0].data["rows"] == 2


async def test_upload_publishes_progress_only_on_change(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """Polls that see the same list_state again publish no progress."""
    sim.list_active_after = 60
    first = await upload_list(copy.deepcopy(P2P_UPLOAD), make_ctx(client))
    assert isinstance(first, Continue) and first.progress is not None
    second = await upload_list(copy.deepcopy(P2P_UPLOAD), make_ctx(client, state=first.state))
    assert isinstance(second, Continue) and second.progress is None
    assert len(sim.effects("list_uploaded")) == 1


async def test_upload_deadline(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """A list not ACTIVE list_deadline_seconds after the first attempt fails: list_processing_timeout."""
    payload = {**copy.deepcopy(P2P_UPLOAD), "list_name": "NEVER-ACTIVE list"}
    first = await upload_list(payload, make_ctx(client))
    assert isinstance(first, Continue)
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=7)
    with pytest.raises(PermanentError) as caught:
        await upload_list(payload, make_ctx(client, state=first.state, first_attempt_at=long_ago))
    assert caught.value.code == "list_processing_timeout"


async def test_upload_failed_list_state(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """A list Peerly ends in ERROR fails the command with list_processing_failed."""
    with pytest.raises(PermanentError) as caught:
        await run_upload({**copy.deepcopy(P2P_UPLOAD), "list_name": "FAIL-list"}, client)
    assert caught.value.code == "list_processing_failed"


async def test_upload_assignment_failure_names_what_was_done(
    sim: PeerlySimulator, client: PeerlyClient
) -> None:
    """If assigning to a job fails, the error says the list_id, the jobs done and the job that failed."""
    good = sim.add_job()
    with pytest.raises(VendorRejected) as caught:
        await run_upload({**copy.deepcopy(P2P_UPLOAD), "assign_to_jobs": [good, "missing-job"]}, client)
    assert caught.value.details["assigned_jobs"] == [good]
    assert caught.value.details["failed_job"] == "missing-job"
    assert isinstance(caught.value.details["list_id"], int)


async def test_upload_continuation_never_uploads_again(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """Repeating a continuation step (same state) polls again but never re-uploads or re-assigns."""
    job = sim.add_job()
    payload = {**copy.deepcopy(P2P_UPLOAD), "assign_to_jobs": [job]}
    first = await upload_list(payload, make_ctx(client))
    assert isinstance(first, Continue)
    await asyncio.sleep(sim.list_active_after)
    for _ in range(2):  # the poll that sees ACTIVE records it in a step of its own: nothing assigned yet
        active = await upload_list(payload, make_ctx(client, state=copy.deepcopy(first.state)))
        assert isinstance(active, Continue) and active.state["list_id"] is not None
    assert sim.effects("list_assigned") == []
    done = await upload_list(payload, make_ctx(client, state=copy.deepcopy(active.state)))
    assert isinstance(done, dict) and done["assigned_jobs"] == [job]
    assert done["duplicate_appended_jobs"] == []
    # The assign step again, as after its worker died mid-call: not sent a second time.
    with pytest.raises(OutcomeUnknown) as caught:
        await upload_list(payload, make_ctx(client, state=copy.deepcopy(active.state), resumed=True))
    assert caught.value.details == {"list_id": done["list_id"], "assigned_jobs": [], "unknown_job": job}
    assert len(sim.effects("list_uploaded")) == 1
    assert sim.job_lists(job) == [done["list_id"]]


async def test_upload_assign_that_may_have_acted_is_not_retried(
    sim: PeerlySimulator, client: PeerlyClient
) -> None:
    """An assign answered 500 after Peerly appended ends outcome_unknown (a retry would text the list twice)."""
    jobs = [sim.add_job("A"), sim.add_job("B")]
    payload = {**copy.deepcopy(P2P_UPLOAD), "assign_to_jobs": jobs}
    sim.add_fault(
        Fault(kind="status", status=500, path_prefix=f"/api/1to1/jobs/{jobs[1]}/", after_processing=True)
    )
    with pytest.raises(OutcomeUnknown) as caught:
        await run_upload(payload, client)
    assert caught.value.details["assigned_jobs"] == [jobs[0]]
    assert caught.value.details["unknown_job"] == jobs[1]
    assert len(sim.effects("list_assigned")) == 2 and sim.repeated_effects() == {}


async def test_upload_assign_refused_before_acting_is_retried(
    sim: PeerlySimulator, client: PeerlyClient
) -> None:
    """An assign answered 503 (not applied) raises a retryable error; the same step again assigns once."""
    job = sim.add_job()
    payload = {**copy.deepcopy(P2P_UPLOAD), "assign_to_jobs": [job]}
    step = await upload_list(payload, make_ctx(client))
    while isinstance(step, Continue) and step.state.get("list_id") is None:
        await asyncio.sleep(min(step.after_seconds, 0.1))
        step = await upload_list(payload, make_ctx(client, state=copy.deepcopy(step.state)))
    assert isinstance(step, Continue)
    sim.add_fault(Fault(kind="status", status=503, path_prefix="/api/1to1/jobs/", count=1))
    with pytest.raises(VendorUnavailable) as caught:
        await upload_list(payload, make_ctx(client, state=copy.deepcopy(step.state)))
    assert not caught.value.maybe_applied and sim.effects("list_assigned") == []
    result = await upload_list(payload, make_ctx(client, state=copy.deepcopy(step.state), attempt=2))
    assert isinstance(result, dict) and result["assigned_jobs"] == [job]
    assert sim.job_lists(job) == [result["list_id"]]


async def test_upload_from_file_path(
    sim: PeerlySimulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A file under upload_dir is sent as it is, with the payload's list_map."""
    (tmp_path / "may.csv").write_bytes(b"name,phone\r\nAda,2025550143\r\n")
    client = make_client(upload_dir=str(tmp_path))
    payload = {k: v for k, v in copy.deepcopy(P2P_UPLOAD).items() if k != "rows"}
    payload |= {"file": {"path": "may.csv"}, "list_map": {"first_name": 1, "lead_phone": 2}}
    result, _, _ = await run_upload(payload, client)
    assert result["list_state"] == "ACTIVE" and result["rows_sent"] is None
    assert b"Ada,2025550143" in next(r for r in sim.requests if r.path == "/api/phonelists").body


async def test_upload_zip_from_file_path(
    sim: PeerlySimulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A .zip of .csv files is sent as application/zip and accepted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.csv", "lead_phone\r\n2025550143\r\n")
    (tmp_path / "lists.zip").write_bytes(buffer.getvalue())
    client = make_client(upload_dir=str(tmp_path))
    payload = {k: v for k, v in copy.deepcopy(P2P_UPLOAD).items() if k != "rows"} | {
        "file": {"path": "lists.zip"}
    }
    await upload_list(payload, make_ctx(client))
    assert sim.effects("list_uploaded")[0].data["rows"] == 1


async def test_file_over_100_mib_refused_before_sending(
    sim: PeerlySimulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A file over 104,857,600 bytes is refused (file_too_large) and nothing reaches Peerly."""
    big = tmp_path / "big.csv"
    with big.open("wb") as handle:
        handle.truncate(MAX_UPLOAD_BYTES + 1)
    client = make_client(upload_dir=str(tmp_path))
    payload = {k: v for k, v in copy.deepcopy(P2P_UPLOAD).items() if k != "rows"} | {
        "file": {"path": "big.csv"}
    }
    with pytest.raises(InvalidPayload) as caught:
        await upload_list(payload, make_ctx(client))
    assert caught.value.code == "file_too_large"
    assert [r for r in sim.requests if r.path != "/api/token-auth"] == []


async def test_file_url_not_on_allowlist_refused(sim: PeerlySimulator, make_client: ClientFactory) -> None:
    """A file URL off the allow-list is InvalidPayload at /payload/file/url; nothing is fetched or sent."""
    client = make_client(upload_url_allowlist="files.example.org")
    payload = {k: v for k, v in copy.deepcopy(P2P_UPLOAD).items() if k != "rows"}
    payload["file"] = {"url": "https://elsewhere.example.com/a.csv"}
    with pytest.raises(InvalidPayload) as caught:
        await upload_list(payload, make_ctx(client))
    assert caught.value.path == "/payload/file/url"
    assert sim.requests == []


async def test_upload_refused_by_peerly_when_check_is_bypassed(
    sim: PeerlySimulator, client: PeerlyClient
) -> None:
    """The simulator itself enforces the table: a payload missing opt_in (not P2P) gets Peerly's 400."""
    payload = {**copy.deepcopy(P2P_UPLOAD), "suppress_cell_phones": 1}
    with pytest.raises(VendorRejected) as caught:
        await upload_list(payload, make_ctx(client))
    assert "opt_in" in caught.value.details["vendor_error"]
    assert sim.effects("list_uploaded") == []


async def test_create_media(sim: PeerlySimulator, make_client: ClientFactory, tmp_path: Path) -> None:
    """create_media uploads the file as multipart initial_file_upload and returns the media id."""
    (tmp_path / "rally.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    client = make_client(upload_dir=str(tmp_path))
    result = await create_media({"title": "Rally", "file": {"path": "rally.mp4"}}, make_ctx(client))
    assert result["media_id"] in sim.media and result["media_type"] == "VIDEO"
    assert result["status"] != "ERROR"
    request = next(r for r in sim.requests if r.path == "/api/v2/media")
    assert request.content_type == "multipart/form-data"
    assert b'name="identity_id"\r\n\r\n12345678' in request.body


async def test_create_media_201_error_is_failure(
    sim: PeerlySimulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A 201 with status ERROR is a failure carrying Peerly's error text."""
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    client = make_client(upload_dir=str(tmp_path))
    with pytest.raises(VendorRejected) as caught:
        await create_media({"title": "corrupt clip", "file": {"path": "clip.mp4"}}, make_ctx(client))
    assert caught.value.code == "media_processing_failed"
    assert "process this media" in caught.value.details["vendor_error"]


async def test_bad_response_shape_is_invalid_vendor_response(
    sim: PeerlySimulator, client: PeerlyClient
) -> None:
    """A 2xx whose body lacks the documented fields is invalid_vendor_response, not success."""

    sim.answer_with("GET", "/api/phonelists/shape/checkstatus", 200, {"ok": True})
    with pytest.raises(PermanentError) as caught:
        await check_list_status({"list_status_token": "shape"}, make_ctx(client))
    assert caught.value.code == "invalid_vendor_response"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"error": "from error"}, "from error"),
        ({"message": "from message"}, "from message"),
        ({"Error": "from Error"}, "from Error"),
        ({"list_id": ["must be an integer"]}, "list_id: must be an integer"),
    ],
)
async def test_error_text_read_from_every_key(
    sim: PeerlySimulator, client: PeerlyClient, body: dict[str, Any], text: str
) -> None:
    """Peerly's error text is read from error, message or Error (or the whole body)."""
    job_id = sim.add_job()
    sim.answer_with("POST", f"/api/1to1/jobs/{job_id}/assignlist", 400, body)
    with pytest.raises(VendorRejected) as caught:
        await assign_list({"job_id": job_id, "list_id": 1}, make_ctx(client))
    assert caught.value.details["vendor_error"] == text
    assert text in caught.value.message


async def test_create_media_missing_media_id_is_invalid(
    sim: PeerlySimulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A media answer without media_id (and not ERROR) is invalid_vendor_response."""
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    sim.answer_with("POST", "/api/v2/media", 201, {"status": "ACTIVE"})
    with pytest.raises(PermanentError) as caught:
        await create_media({"file": {"path": "a.png"}}, make_ctx(make_client(upload_dir=str(tmp_path))))
    assert caught.value.code == "invalid_vendor_response"


async def test_upload_without_token_is_invalid(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """A 201 upload answer without Data.token is invalid_vendor_response."""
    sim.answer_with("POST", "/api/phonelists", 201, {"Data": {"list_state": "PENDING"}})
    with pytest.raises(PermanentError) as caught:
        await upload_list(copy.deepcopy(P2P_UPLOAD), make_ctx(client))
    assert caught.value.code == "invalid_vendor_response"


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        (Fault(kind="status", status=429, retry_after=7), RateLimited, "rate_limited"),
        (Fault(kind="status", status=503), VendorUnavailable, "vendor_unavailable"),
        (Fault(kind="status", status=500), VendorUnavailable, "vendor_server_error"),
        (Fault(kind="drop"), VendorUnavailable, "vendor_connection_lost"),
        (Fault(kind="slow", delay=2.0), VendorUnavailable, "vendor_timeout"),
    ],
)
async def test_transport_faults_are_transient(
    sim: PeerlySimulator, make_client: ClientFactory, fault: Fault, error: type[Exception], code: str
) -> None:
    """429 (with Retry-After), 5xx, dropped and slow answers come out as retryable errors."""
    client = make_client(timeout=0.5)
    job_id, list_id = sim.add_job(), sim.add_active_list()
    fault.path_prefix = "/api/1to1"
    sim.add_fault(fault)
    with pytest.raises(error) as caught:
        await assign_list({"job_id": job_id, "list_id": list_id}, make_ctx(client))
    assert getattr(caught.value, "code", None) == code
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 7


@pytest.mark.parametrize(("case", "payload", "missing"), UPLOAD_TABLE, ids=[c[0] for c in UPLOAD_TABLE])
async def test_simulator_enforces_upload_table(
    sim: PeerlySimulator, client: PeerlyClient, case: str, payload: dict[str, Any], missing: str | None
) -> None:
    """With the worker's check bypassed, the simulator refuses (400) exactly what the table refuses."""
    if missing is None:
        assert isinstance(await upload_list(copy.deepcopy(payload), make_ctx(client)), Continue)
        return
    with pytest.raises(VendorRejected) as caught:
        await upload_list(copy.deepcopy(payload), make_ctx(client))
    assert missing in caught.value.details["vendor_error"]
    assert sim.effects("list_uploaded") == []


async def test_failed_status_check_is_a_missed_poll(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """A 503 on a status check does not fail the upload: the next poll follows, no progress published."""
    first = await upload_list(copy.deepcopy(P2P_UPLOAD), make_ctx(client))
    assert isinstance(first, Continue)
    sim.add_fault(Fault(kind="status", status=503, retry_after=3, path_prefix="/api/phonelists/", count=1))
    second = await upload_list(copy.deepcopy(P2P_UPLOAD), make_ctx(client, state=first.state))
    assert isinstance(second, Continue) and second.progress is None
    assert second.after_seconds == 3
    result, _, _ = await run_upload(copy.deepcopy(P2P_UPLOAD), client)
    assert result["list_state"] == "ACTIVE"


@pytest.mark.parametrize(
    "command", ["upload_list", "check_list_status", "create_job", "assign_list", "create_media"]
)
async def test_examples_work_in_the_sandbox(session: Any, tmp_path: Path, command: str) -> None:
    """Each command's registered example payload succeeds against start_sandbox()'s simulator."""
    from handlers.peerly import PeerlyAccount
    from handlers.peerly.sandbox import start_sandbox
    from worker.vendor_http import VendorHTTP

    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "rally.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    sandbox = await start_sandbox(list_active_after=0.2)
    try:
        account = PeerlyAccount.model_validate(dict(sandbox.account) | {"upload_dir": str(tmp_path)})
        client = PeerlyClient(account, VendorHTTP("peerly", session, account.base_url))
        spec = registry.commands[command]
        payload = copy.deepcopy(spec.example)
        if spec.check is not None:
            payload = spec.check(payload)
        if command == "upload_list":
            result, _, _ = await run_upload(payload, client)
            assert result["assigned_jobs"] == payload["assign_to_jobs"]
        else:
            result = await spec.handler(payload, make_ctx(client))
            assert isinstance(result, dict)
    finally:
        await sandbox.stop()


async def test_simulator_keeps_binary_uploads_intact(
    sim: PeerlySimulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Bytes of every value (CR, LF, NUL ...) reach the simulator unchanged in a multipart upload."""
    content = bytes(range(256)) * 64 + b"\r\n\r\n--\r\n\n\r"
    (tmp_path / "pic.png").write_bytes(content)
    client = make_client(upload_dir=str(tmp_path))
    result = await create_media({"file": {"path": "pic.png"}}, make_ctx(client))
    assert result["size_bytes"] == len(content) and result["media_type"] == "IMAGE"


async def test_serve_runs_until_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    """serve() prints the sandbox account settings on stderr and stops cleanly when cancelled."""
    import orjson

    from handlers.peerly.sandbox import serve

    task = asyncio.ensure_future(serve("127.0.0.1", 0))
    printed = ""
    deadline = asyncio.get_running_loop().time() + 5
    while not printed.strip() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
        printed += capsys.readouterr().err
    account = orjson.loads(printed.strip().splitlines()[-1])
    assert account["base_url"].endswith("/api") and account["email"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
