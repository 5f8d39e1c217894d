"""The bare baseline's calibration knob (``--burn-us``, ``python -m bench --calibrate``) and its keep-alive HTTP."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from urllib.parse import urlencode

import orjson
import pytest

import bench.__main__ as bench_main
from bench.baseline import Baseline, burn
from bench.simulator import start_simulator


def test_burn_spends_at_least_the_cpu_asked_for() -> None:
    """The calibration adds CPU, not wall time: the thread's own clock moves by at least that much."""
    started = time.thread_time()
    burn(0.005)
    assert time.thread_time() - started >= 0.005


@pytest.mark.parametrize("value", ["abc", "0", "-100", "nan", "100,x"])
def test_calibrate_refuses_what_is_not_microseconds_above_zero(value: str, tmp_path: Path) -> None:
    """A bad ``--calibrate`` stops the bench before anything runs, saying what it takes."""
    args = bench_main._parser().parse_args(["--calibrate", value])
    with pytest.raises(SystemExit, match="microseconds above 0"):
        bench_main._config(args, tmp_path, "stamp")


def test_calibrate_lists_the_extra_baselines(tmp_path: Path) -> None:
    args = bench_main._parser().parse_args(["--calibrate", "100, 200"])
    assert bench_main._config(args, tmp_path, "stamp").calibrate_us == (100.0, 200.0)


def test_the_keepalive_baseline_runs_only_when_asked(tmp_path: Path) -> None:
    parser = bench_main._parser()
    assert not bench_main._config(parser.parse_args([]), tmp_path, "stamp").keepalive_baseline
    assert bench_main._config(
        parser.parse_args(["--keepalive-baseline"]), tmp_path, "stamp"
    ).keepalive_baseline


async def test_the_keepalive_baseline_sends_its_texts_on_one_connection() -> None:
    """``bench.baseline --http keepalive``: the simulator takes its POSTs as the aiohttp baseline's."""
    simulator = await start_simulator(latency_ms=0, impl="raw")
    baseline = Baseline(
        amqp_url="amqp://unused",
        sim_url=simulator.base_url,
        authorization="Basic " + base64.b64encode(b"bench-key:bench-token").decode(),
        confirms=True,
        prefetch=8,
        keepalive_http=True,
    )
    assert baseline.pool is not None
    form = urlencode({"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "b"}).encode()
    try:
        for _ in range(3):
            answer = await baseline.pool.request("POST", baseline.send_path, baseline.headers, form, 5.0)
            assert answer.status == 200 and orjson.loads(answer.body)["status"] == "success"
        assert simulator.counters.sent == 3
        assert baseline.pool._open == 1
    finally:
        await baseline.pool.close()
        await simulator.close()
