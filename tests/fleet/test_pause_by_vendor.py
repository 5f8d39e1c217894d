"""`pause`/`resume --vendor`, and paused commands that back off instead of cycling every few seconds."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from handlers.pidj.sandbox import PidjSimulator
from tests.runtime.conftest import SEND, pidj_env
from tests.support.amqp import AMQP_URL, EventTap, publish_command
from tests.support.worker import SWITCHBOARD, WorkerProcess
from worker.controls import Controls, pause_key, pause_wait


def cli(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update({"SWITCHBOARD_AMQP_URL": AMQP_URL, "SWITCHBOARD_STORE_URL": store_url})
    return subprocess.run([str(SWITCHBOARD), *args], env=env, capture_output=True, text=True, timeout=60)


def wait_until(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_vendor_pause_holds_only_that_vendor() -> None:
    """A pause of pidj's default account leaves peerly's default account running; the old form holds both."""
    controls = Controls(None)
    controls.load({pause_key("default", None, "pidj"): {"since": time.time()}})
    assert controls.paused("default", "send_text", "pidj")
    assert not controls.paused("default", "send_message", "peerly")
    controls.load({pause_key("default", None): {"since": time.time()}})
    assert controls.paused("default", "send_text", "pidj")
    assert controls.paused("default", "send_message", "peerly")


def test_vendor_pause_without_account_holds_every_account_in_one_key() -> None:
    """`pause --vendor pidj` is one key that holds every pidj account and type, and no other vendor."""
    controls = Controls(None)
    controls.load({pause_key("*", None, "pidj"): {"since": time.time()}})
    for account in ("default", "east", "west"):
        for command_type in ("send_text", "create_contact", "initiate_task"):
            assert controls.paused(account, command_type, "pidj")
    assert not controls.paused("east", "send_message", "peerly")


def test_paused_wait_grows_with_the_pause_and_is_bounded() -> None:
    """A fresh pause waits DEFER_SECONDS, an older one as long as it has lasted, never past the cap."""
    assert pause_wait(0.2, floor=5, cap=60) == 5
    assert pause_wait(20, floor=5, cap=60) == 20
    assert pause_wait(3600, floor=5, cap=60) == 60
    controls = Controls(None, max_wait_seconds=60)
    controls.load({pause_key("default", None, "pidj"): {"since": time.time() - 3600}})
    assert controls.paused_wait("default", "send_text", "pidj", floor=5) == 60
    assert controls.paused_wait("default", "send_text", "other", floor=5) is None


@pytest.mark.integration
def test_pause_and_resume_by_vendor_end_to_end(broker: None, pidj: PidjSimulator, tmp_path: Path) -> None:
    """Pausing peerly does not hold pidj; pausing pidj holds it; resume --vendor pidj sends them all."""
    store = f"sqlite:///{tmp_path}/shared.sqlite3"
    env = {**pidj_env(pidj, defer_seconds=1), "SWITCHBOARD_STORE_URL": store}
    with WorkerProcess(env) as worker, EventTap() as tap:
        assert cli(store, "pause", "--vendor", "peerly").returncode == 0
        time.sleep(1.0)  # the promise: every worker has it within one second
        free = publish_command("send_text", SEND)
        assert tap.wait_for(free, timeout=30)["status"] == "succeeded"
        paused = cli(store, "pause", "--vendor", "pidj")
        assert paused.returncode == 0, paused.stderr
        assert "paused pidj/*/*" in paused.stderr
        time.sleep(1.0)
        held = [publish_command("send_text", {**SEND, "text_body": f"held {i}"}) for i in range(5)]
        wait_until(
            lambda: worker.metric("switchboard_deferrals_total", type="send_text", reason="paused") >= 5
        )
        assert len(pidj.effects()) == 1
        assert worker.metric("switchboard_paused", account="pidj/*", type="*") == 1
        event = tap.wait_for_routing_key("control.paused")
        assert (event["vendor"], event["account"]) in {("peerly", "*"), ("pidj", "*")}
        resumed = cli(store, "resume", "--vendor", "pidj")
        assert resumed.returncode == 0, resumed.stderr
        for command_id in held:
            assert tap.wait_for(command_id, timeout=30)["status"] == "succeeded"
    assert len(pidj.effects()) == 6


@pytest.mark.integration
def test_unknown_vendor_or_foreign_type_is_refused(tmp_path: Path) -> None:
    """`pause --vendor` checks the vendor name and that --type is one of its command types."""
    store = f"sqlite:///{tmp_path}/store.sqlite3"
    unknown = cli(store, "pause", "--vendor", "pidjj")
    assert unknown.returncode != 0 and "unknown vendor 'pidjj'" in unknown.stderr
    foreign = cli(store, "pause", "--vendor", "peerly", "--type", "send_text")
    assert foreign.returncode != 0 and "not a peerly command type" in foreign.stderr


@pytest.mark.integration
def test_a_long_pause_backs_off(broker: None, pidj: PidjSimulator, tmp_path: Path) -> None:
    """Over 12 s of pause, a command with DEFER_SECONDS=1 comes back about 4 times, not 12 (cap 4 s)."""
    store = f"sqlite:///{tmp_path}/shared.sqlite3"
    env = {
        **pidj_env(pidj, defer_seconds=1, pause_max_defer_seconds=4),
        "SWITCHBOARD_STORE_URL": store,
    }
    with WorkerProcess(env) as worker, EventTap() as tap:
        assert cli(store, "pause", "--vendor", "pidj").returncode == 0
        time.sleep(1.0)
        held = publish_command("send_text", SEND)
        wait_until(
            lambda: worker.metric("switchboard_deferrals_total", type="send_text", reason="paused") >= 1
        )
        window = 12.0  # the measured span: how often the held command comes back during it
        time.sleep(window)
        cycles = worker.metric("switchboard_deferrals_total", type="send_text", reason="paused")
        assert 2 <= cycles <= 6, cycles
        assert cli(store, "resume", "--vendor", "pidj").returncode == 0
        assert tap.wait_for(held, timeout=30)["status"] == "succeeded"
