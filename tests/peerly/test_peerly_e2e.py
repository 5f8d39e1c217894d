"""Peerly commands end to end: RabbitMQ -> ``switchboard run`` -> the Peerly simulator -> events."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.peerly.jobs import JOB_EXAMPLE
from handlers.peerly.sandbox import SANDBOX_EMAIL, SANDBOX_PASSWORD, PeerlySimulator
from handlers.simulator import Fault
from tests.peerly.conftest import P2P_UPLOAD
from tests.support.amqp import EventTap, publish_command
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[PeerlySimulator]:  # overrides the async one: the worker is another process
    """The simulator served from a thread; lists turn ACTIVE after 1.5 s."""
    simulator = PeerlySimulator(list_active_after=1.5, seed=2)
    with simulator.running_in_thread():
        yield simulator


def worker_env(sim: PeerlySimulator, **extra: str) -> dict[str, str]:
    return {
        "SWITCHBOARD_VENDORS": "peerly",
        "SWITCHBOARD_PEERLY_BASE_URL": sim.api_url,
        "SWITCHBOARD_PEERLY_EMAIL": SANDBOX_EMAIL,
        "SWITCHBOARD_PEERLY_PASSWORD": SANDBOX_PASSWORD,
        "SWITCHBOARD_PEERLY_ACCOUNT_ID": "12345678",
        "SWITCHBOARD_PEERLY_LIST_POLL_SECONDS": "1",
        **extra,
    }


def statuses(tap: EventTap, command_id: str) -> list[str]:
    return [e["status"] for e in tap.all_for(command_id)]


def test_upload_followed_to_active_and_assigned(broker: None, sim: PeerlySimulator) -> None:
    """An upload is followed to ACTIVE through delayed messages, assigned, and the job shows the list."""
    job_id = sim.add_job("Volunteer outreach")
    payload: dict[str, Any] = {**copy.deepcopy(P2P_UPLOAD), "assign_to_jobs": [job_id]}
    payload["rows"].append({"lead_phone": "555"})
    with EventTap() as tap, WorkerProcess(worker_env(sim)):
        command_id = publish_command("upload_list", payload)
        event = tap.wait_for(command_id, timeout=60)
        assert event["status"] == "succeeded", event
        result = event["result"]
        assert result["list_state"] == "ACTIVE" and result["assigned_jobs"] == [job_id]
        assert result["invalid_rows"]["indexes"] == [2]
        progress = [e["result"] for e in tap.all_for(command_id) if e["status"] == "progress"]
    assert progress and progress[0]["list_state"] == "PENDING"
    assert sim.job_lists(job_id) == [result["list_id"]]
    assert len(sim.effects("list_uploaded")) == 1
    assert sim.repeated_effects() == {}


def test_create_job_then_assign_list(broker: None, sim: PeerlySimulator) -> None:
    """create_job then assign_list through the broker: the simulator's job has the list."""
    list_id = sim.add_active_list()
    with EventTap() as tap, WorkerProcess(worker_env(sim)):
        created = tap.wait_for(
            publish_command("create_job", copy.deepcopy(JOB_EXAMPLE) | {"account_id": "12345678"})
        )
        assert created["status"] == "succeeded", created
        assert created["result"]["job_id"] is None  # Peerly's documented answer names no job id
        # As a person would read it in Peerly's app: here, the simulator's record.
        job_id = sim.effects("job_created")[0].data["job_id"]
        assigned = tap.wait_for(publish_command("assign_list", {"job_id": job_id, "list_id": list_id}))
        assert assigned["status"] == "succeeded", assigned
        assert assigned["result"]["phone_lists"] == [list_id]
        assert assigned["result"]["duplicate_appended"] is False
    assert sim.job_lists(job_id) == [list_id]
    assert len(sim.effects("job_created")) == 1


def test_check_list_status(broker: None, sim: PeerlySimulator) -> None:
    """check_list_status answers the simulator's state and list_id."""
    list_id = sim.add_active_list()
    token = next(iter(sim.lists))
    with EventTap() as tap, WorkerProcess(worker_env(sim)):
        event = tap.wait_for(publish_command("check_list_status", {"list_status_token": token}))
    assert event["status"] == "succeeded", event
    assert event["result"]["list_id"] == list_id and event["result"]["active"] is True


def test_create_media_and_201_error(broker: None, sim: PeerlySimulator, tmp_path: Path) -> None:
    """create_media succeeds with a media_id; a 201 with status ERROR ends as failed with Peerly's text."""
    (tmp_path / "rally.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    env = worker_env(sim, SWITCHBOARD_PEERLY_UPLOAD_DIR=str(tmp_path))
    with EventTap() as tap, WorkerProcess(env):
        good = tap.wait_for(
            publish_command("create_media", {"title": "Rally", "file": {"path": "rally.mp4"}})
        )
        bad = tap.wait_for(
            publish_command("create_media", {"title": "corrupt", "file": {"path": "rally.mp4"}})
        )
    assert good["status"] == "succeeded" and good["result"]["media_id"] in sim.media
    assert bad["status"] == "failed" and bad["error"]["code"] == "media_processing_failed"
    assert "process this media" in bad["error"]["details"]["vendor_error"]


def test_upload_table_rule_rejects_before_sending(broker: None, sim: PeerlySimulator) -> None:
    """An IVR upload without opt_in is rejected by the worker; nothing reaches Peerly."""
    payload = {**copy.deepcopy(P2P_UPLOAD), "suppress_cell_phones": 1}
    with EventTap() as tap, WorkerProcess(worker_env(sim)):
        event = tap.wait_for(publish_command("upload_list", payload))
    assert event["status"] == "rejected", event
    assert "opt_in" in event["error"]["message"]
    assert [r for r in sim.requests if r.path == "/api/phonelists"] == []


def test_token_expiring_mid_run_refreshed_once(broker: None, sim: PeerlySimulator) -> None:
    """When Peerly stops accepting the token mid-run, 30 waiting commands share one new login."""
    sim.add_active_list()
    token_path = next(iter(sim.lists))
    with EventTap() as tap, WorkerProcess(worker_env(sim)):
        first = tap.wait_for(publish_command("check_list_status", {"list_status_token": token_path}))
        assert first["status"] == "succeeded"
        sim.expire_tokens()
        ids = [publish_command("check_list_status", {"list_status_token": token_path}) for _ in range(30)]
        events = [tap.wait_for(command_id, timeout=30) for command_id in ids]
    assert all(e["status"] == "succeeded" for e in events)
    assert sim.logins() == 2


def test_rate_limited_assign_is_retried(broker: None, sim: PeerlySimulator) -> None:
    """A 429 with Retry-After on a safe command is retried and then succeeds; the list is assigned once."""
    job_id, list_id = sim.add_job(), sim.add_active_list()
    sim.add_fault(Fault(kind="status", status=429, retry_after=1, path_prefix="/api/1to1/", count=1))
    with EventTap() as tap, WorkerProcess(worker_env(sim)):
        event = tap.wait_for(
            publish_command("assign_list", {"job_id": job_id, "list_id": list_id}), timeout=30
        )
    assert event["status"] == "succeeded", event
    assert event["attempts"] >= 2
    assert sim.job_lists(job_id) == [list_id]


def test_create_job_500_after_acting_is_not_repeated(broker: None, sim: PeerlySimulator) -> None:
    """create_job is unsafe: a 500 after Peerly created the job ends as outcome_unknown, with one job only."""
    sim.add_fault(
        Fault(kind="status", status=500, path_prefix="/api/1to1/jobs", count=1, after_processing=True)
    )
    with EventTap() as tap, WorkerProcess(worker_env(sim)):
        event = tap.wait_for(
            publish_command("create_job", copy.deepcopy(JOB_EXAMPLE) | {"account_id": "12345678"})
        )
    assert event["status"] == "failed", event
    assert event["error"]["code"] == "outcome_unknown"
    assert len(sim.effects("job_created")) == 1


def test_create_job_503_before_acting_is_retried(broker: None, sim: PeerlySimulator) -> None:
    """A 503 (Peerly did nothing) on create_job is retried and creates exactly one job."""
    sim.add_fault(Fault(kind="status", status=503, retry_after=1, path_prefix="/api/1to1/jobs", count=1))
    with EventTap() as tap, WorkerProcess(worker_env(sim)):
        event = tap.wait_for(
            publish_command("create_job", copy.deepcopy(JOB_EXAMPLE) | {"account_id": "12345678"})
        )
    assert event["status"] == "succeeded", event
    assert len(sim.effects("job_created")) == 1
