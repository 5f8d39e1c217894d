"""The bare baseline's calibration knob (``--burn-us``, ``python -m bench --calibrate``)."""

from __future__ import annotations

import time

from bench.baseline import burn


def test_burn_spends_at_least_the_cpu_asked_for() -> None:
    """The calibration adds CPU, not wall time: the thread's own clock moves by at least that much."""
    started = time.thread_time()
    burn(0.005)
    assert time.thread_time() - started >= 0.005
