"""Issue 15 items 6 and 7: results are bounded in size, and an expired stored result is not replayed."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from handlers import build_registry
from handlers.pidj.sandbox import PidjSimulator
from handlers.pidj.sandbox_state import blank_contact
from tests.support.amqp import EventTap, publish_command
from tests.support.worker import WorkerProcess
from worker import results
from worker.events import utc_iso

registry = build_registry()

LIMIT = 8192


def test_bound_cuts_the_largest_list_and_says_so() -> None:
    """Past the limit the largest list is cut to what fits, with field, returned and total counts."""
    result = {"status": "success", "contacts": [{"id": f"co:{i}", "pad": "x" * 50} for i in range(1000)]}
    bounded = results.bound(result, lambda r: len(orjson.dumps({"result": r})), LIMIT)
    note = bounded["truncated"]
    assert (note["field"], note["total"], note["max_result_bytes"]) == ("contacts", 1000, LIMIT)
    assert 0 < note["returned"] == len(bounded["contacts"]) < 1000
    assert len(orjson.dumps({"result": bounded})) <= LIMIT
    assert bounded["contacts"] == result["contacts"][: note["returned"]], "a prefix, in the vendor's order"


def test_bound_leaves_a_small_result_alone() -> None:
    """A result under the limit is returned as it is, with no flag."""
    result = {"contacts": [{"id": "co:1"}]}
    assert results.bound(result, lambda r: len(orjson.dumps(r)), LIMIT) is result


def test_bound_without_a_list_to_cut_replaces_the_result_with_a_note() -> None:
    """A result too large with nothing to cut becomes a note: never an event over the limit."""
    bounded = results.bound({"blob": "x" * 20000}, lambda r: len(orjson.dumps(r)), LIMIT)
    assert bounded == {
        "truncated": {
            "field": None,
            "result_bytes": len(orjson.dumps({"blob": "x" * 20000})),
            "max_result_bytes": LIMIT,
        }
    }


def test_expired_reads_the_events_time() -> None:
    """A succeeded event older than the declared expiry is expired; younger, or with no expiry, is not."""
    now = time.time()
    event = {"status": "succeeded", "occurred_at": utc_iso(now - 120)}
    assert results.expired(event, 55.0, now)
    assert not results.expired(event, 300.0, now)
    assert not results.expired(event, None, now)
    assert not results.expired({**event, "status": "failed"}, 55.0, now)


def test_create_sso_url_declares_its_expiry() -> None:
    """create_sso_url's result (a URL valid 60 s) declares an expiry under 60 s."""
    expiry = registry.commands["create_sso_url"].result_expires_after_seconds
    assert expiry is not None and expiry < 60


@pytest.fixture(scope="module")
def sim() -> Iterator[PidjSimulator]:
    simulator = PidjSimulator()
    with simulator.running_in_thread():
        yield simulator


@pytest.fixture(scope="module")
def worker(sim: PidjSimulator, topology_declared: None) -> Iterator[WorkerProcess]:
    account = sim.account()
    env = {
        "SWITCHBOARD_VENDORS": "pidj",
        "SWITCHBOARD_PIDJ_BASE_URL": account["base_url"],
        "SWITCHBOARD_PIDJ_ACCOUNT_KEY": account["account_key"],
        "SWITCHBOARD_PIDJ_TOKEN": account["token"],
        "SWITCHBOARD_MAX_RESULT_BYTES": str(LIMIT),
    }
    with WorkerProcess(env) as process:
        yield process


def _nth(tap: EventTap, command_id: str, count: int, timeout: float = 30.0) -> dict[str, Any]:
    """The ``count``-th event for ``command_id`` (polled with a deadline)."""
    deadline = time.monotonic() + timeout
    while len(found := tap.all_for(command_id)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} events for {command_id}"
        time.sleep(0.1)
    return found[count - 1]


def _run(tap: EventTap, command_type: str, payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return tap.wait_for(publish_command(command_type, payload, **kwargs), timeout=30)


@pytest.mark.integration
def test_list_contacts_event_stays_under_the_limit(
    broker: None, sim: PidjSimulator, worker: WorkerProcess
) -> None:
    """5,000 contacts: the event fits SWITCHBOARD_MAX_RESULT_BYTES and says how many of how many it holds."""
    for index in range(5000):
        contact_id = f"co:bulk{index:05d}"
        sim.state.contacts[contact_id] = blank_contact(contact_id, f"+1888555{index:04d}")
    with EventTap() as tap:
        command_id = publish_command("list_contacts", {})
        event = tap.wait_for(command_id, timeout=30)
        raw = [body for _, _, body in tap.raw if orjson.loads(body).get("command_id") == command_id]
    assert event["status"] == "succeeded"
    note = event["result"]["truncated"]
    assert note["field"] == "contacts" and note["total"] >= 5000
    assert note["returned"] == len(event["result"]["contacts"]) < note["total"]
    assert len(orjson.dumps(event)) <= LIMIT
    assert raw and all(len(body) <= LIMIT for body in raw), "as published, not only as decoded"


def _age_stored_result(worker: WorkerProcess, command_id: str, seconds: float) -> None:
    """Make the stored event look ``seconds`` old (instead of waiting a minute)."""
    path = Path(worker.env["SWITCHBOARD_STORE_URL"].removeprefix("sqlite:///"))
    with sqlite3.connect(path) as conn:
        (event,) = conn.execute("SELECT event FROM commands WHERE command_id = ?", (command_id,)).fetchone()
        stored = orjson.loads(event)
        stored["occurred_at"] = utc_iso(time.time() - seconds)
        conn.execute("UPDATE commands SET event = ? WHERE command_id = ?", (orjson.dumps(stored), command_id))


@pytest.mark.integration
def test_repeated_create_sso_url_after_expiry_gives_a_fresh_url(broker: None, worker: WorkerProcess) -> None:
    """Same id within the expiry: the stored URL again; past it: a new URL (the old one no longer logs in)."""
    with EventTap() as tap:
        user = _run(tap, "create_user", {"username": f"sso-{uuid.uuid4().hex[:8]}", "password": "pw"})
        assert user["status"] == "succeeded", user
        sso = {"user_uuid": user["result"]["id"], "next_url": "https://example.com/x"}
        command_id = str(uuid.uuid4())
        first = _run(tap, "create_sso_url", sso, id=command_id)
        publish_command("create_sso_url", sso, id=command_id)
        again = _nth(tap, command_id, 2)
        assert again["event_id"] == first["event_id"], "within the expiry the stored event is replayed"
        _age_stored_result(worker, command_id, 120)
        publish_command("create_sso_url", sso, id=command_id)
        fresh = _nth(tap, command_id, 3)
    assert fresh["status"] == "succeeded"
    assert fresh["event_id"] != first["event_id"]
    assert fresh["result"]["url"] != first["result"]["url"]


# -- the runtime honours both, for any command (in-process dispatcher) ---------------------
def _harness(expiry: float | None) -> Any:
    import dataclasses

    from tests.unit.test_dispatcher import Harness

    h = Harness()
    for name in ("echo", "charge"):
        spec = h.registry.commands[name]
        h.registry.commands[name] = dataclasses.replace(spec, result_expires_after_seconds=expiry)
    return h


async def test_expired_result_of_a_safe_command_is_made_again() -> None:
    """Safe to repeat and past its expiry: the handler runs again and a new event is published."""
    h = _harness(0.0)
    await h.deliver("echo", "c-1")
    await h.deliver("echo", "c-1")
    assert h.calls == 2
    assert h.statuses() == ["succeeded", "succeeded"]
    assert h.outbox.events[0]["event_id"] != h.outbox.events[1]["event_id"]


async def test_expired_result_of_an_unsafe_command_says_so() -> None:
    """Unsafe and past its expiry: not run again; the stored event comes back flagged result_expired."""
    h = _harness(0.0)
    await h.deliver("charge", "c-1")
    await h.deliver("charge", "c-1")
    assert h.calls == 1
    first, again = h.outbox.events
    assert again["event_id"] == first["event_id"] and again["result_expired"] is True
    assert "result_expired" not in first


async def test_unexpired_result_is_replayed() -> None:
    """Within its expiry the stored event is replayed as before (no second call)."""
    h = _harness(3600.0)
    await h.deliver("echo", "c-1")
    await h.deliver("echo", "c-1")
    assert h.calls == 1 and h.outbox.events[0] == h.outbox.events[1]


async def test_dispatcher_bounds_every_result() -> None:
    """Any command's oversized result is truncated by the runtime to max_result_bytes, as published."""
    import dataclasses

    h = _harness(None)
    h.dispatcher.settings = dataclasses.replace(h.dispatcher.settings, max_result_bytes=LIMIT)

    async def big(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"items": [{"n": i, "pad": "y" * 40} for i in range(2000)]}

    h.behaviour = big
    await h.deliver("echo", "c-big")
    (event,) = h.outbox.events
    assert event["status"] == "succeeded"
    assert event["result"]["truncated"]["total"] == 2000
    assert len(orjson.dumps(event)) <= LIMIT
