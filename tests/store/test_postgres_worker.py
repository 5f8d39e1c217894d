"""A real worker on the PostgreSQL store while PostgreSQL restarts in the middle of the run."""

from __future__ import annotations

import asyncio
import threading

import pytest

from handlers.pidj.sandbox import PidjSimulator
from tests.runtime.conftest import SEND, pidj_env
from tests.store import postgres_server
from tests.store.conftest import POSTGRES_URL, clean_postgres
from tests.support.amqp import TERMINAL, EventTap, publish_command
from tests.support.worker import WorkerProcess
from worker.store import open_stores

pytestmark = [pytest.mark.integration, pytest.mark.drill]

COMMANDS = 400
OPTED_OUT = {f"+1888555{n:04d}" for n in range(0, COMMANDS, 10)}


async def seed_opt_outs() -> None:
    await clean_postgres()
    stores = await open_stores(POSTGRES_URL, retention_seconds=3600)
    try:
        for number in OPTED_OUT:
            await stores.suppressions.add("default", number, reason="STOP", source="test", now=0)
    finally:
        await stores.close()


@pytest.mark.usefixtures("broker", "server_restored")
def test_restart_mid_run_repeats_no_text_and_texts_no_opted_out_number() -> None:
    """Commands flowing while PostgreSQL restarts: each ends once, no text twice, none to an opt-out."""
    asyncio.run(seed_opt_outs())
    simulator = PidjSimulator()
    published: list[tuple[str, str]] = []

    def publish_all() -> None:
        for n in range(COMMANDS):
            number = f"+1888555{n:04d}"
            payload = {**SEND, "to_number": number, "text_body": f"message {n}"}
            published.append((publish_command("send_text", payload), number))

    with (
        simulator.running_in_thread(),
        EventTap() as tap,
        WorkerProcess(pidj_env(simulator, store_url=POSTGRES_URL)) as worker,
    ):
        publisher = threading.Thread(target=publish_all)
        publisher.start()
        tap.wait_for_count(COMMANDS // 4, timeout=60)  # the run is under way
        postgres_server.pg_ctl("restart")
        publisher.join(timeout=120)
        events = {command_id: tap.wait_for(command_id, timeout=120) for command_id, _ in published}
        outcomes = {command_id: {e["event_id"] for e in tap.all_for(command_id) if e["status"] in TERMINAL}
                    for command_id, _ in published}  # fmt: skip
        logs = worker.logs()

    assert len(published) == COMMANDS
    assert simulator.repeated_effects() == {}
    texted = [effect.data["to_number"] for effect in simulator.effects("text")]
    assert not set(texted) & OPTED_OUT
    for command_id, number in published:
        assert len(outcomes[command_id]) == 1, command_id  # one outcome (a republished copy has the same id)
        event = events[command_id]
        if number in OPTED_OUT:
            assert (event["status"], event["error"]["code"]) == ("failed", "recipient_opted_out")
        else:
            assert event["status"] == "succeeded", (event, logs[-3000:])
    assert sorted(texted) == sorted(number for _, number in published if number not in OPTED_OUT)
