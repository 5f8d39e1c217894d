"""The bare baseline's calibration knob (``--burn-us``, ``python -m bench --calibrate``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench.baseline import burn


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
