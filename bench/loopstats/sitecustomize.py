"""Loop statistics of a worker under the bench (``python -m bench --loop-stats``).

Put on ``PYTHONPATH`` of ``switchboard run`` with ``SWITCHBOARD_BENCH_LOOP_STATS`` naming
the Markdown file to write at exit. It times, in the worker only, what the awaits of a
command wait for:

- every loop turn (``BaseEventLoop._run_once``), and in turns over 20 ms the callbacks
  that took the time (a task step is named by its coroutine);
- every command's hold: from its delivery (``worker.runtime.Delivery``) to its ack leaving
  (``Channel.send_acks``), the time it holds a prefetch slot;
- every SQLite write batch (``worker.store.sqlite.Connection._flush``): writes, wall and CPU.

The timers cost a few microseconds a turn and a callback: read the numbers next to each
other, not next to an uninstrumented round.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections import Counter
from typing import Any

SLOW_TURN_SECONDS = 0.02


def _wanted() -> bool:
    return (
        bool(os.environ.get("SWITCHBOARD_BENCH_LOOP_STATS"))
        and os.path.basename(sys.argv[0]) == "switchboard"
        and sys.argv[1:2] == ["run"]
        and "--help" not in sys.argv
    )


def _quantiles(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    n = len(ordered)
    pick = [ordered[min(n - 1, int(n * q))] * 1000 for q in (0.1, 0.5, 0.9, 0.99)]
    return "n {:,}, p10 {:.2f}, p50 {:.2f}, p90 {:.2f}, p99 {:.2f}, max {:.2f} ms".format(
        n, *pick, ordered[-1] * 1000
    )


def _install(output: str) -> None:
    import asyncio.base_events as base_events
    import asyncio.events as events

    turns: list[float] = []
    holds: list[float] = []
    flushes: list[tuple[int, float, float]] = []
    slow_time: dict[str, float] = {}
    slow_calls: Counter[str] = Counter()
    ran: list[tuple[float, Any]] = []
    delivered: dict[tuple[int, int], float] = {}

    def name_of(callback: Any) -> str:
        owner = getattr(callback, "__self__", None)
        if owner is not None and hasattr(owner, "get_coro"):
            return "task: " + getattr(owner.get_coro(), "__qualname__", "?")
        return getattr(callback, "__qualname__", None) or type(callback).__name__

    handle_run = events.Handle._run

    def timed_handle(self: Any) -> None:
        started = time.perf_counter()
        handle_run(self)
        ran.append((time.perf_counter() - started, self._callback))

    run_once = base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]
    patched: list[bool] = []

    def timed_turn(self: Any) -> None:
        if not patched:
            patched.append(True)
            _patch_worker(delivered, holds, flushes)
        ran.clear()
        started = time.perf_counter()
        run_once(self)
        took = time.perf_counter() - started
        turns.append(took)
        if took > SLOW_TURN_SECONDS:
            for seconds, callback in ran:
                name = name_of(callback)
                slow_time[name] = slow_time.get(name, 0.0) + seconds
                slow_calls[name] += 1

    events.Handle._run = timed_handle  # type: ignore[method-assign]
    base_events.BaseEventLoop._run_once = timed_turn  # type: ignore[attr-defined]

    def write() -> None:
        busy = [t for t in turns if t > 0.0002]
        lines = [
            f"# Loop statistics of `switchboard run` (pid {os.getpid()})",
            "",
            f"- turns: {len(turns):,}; over 0.2 ms: {_quantiles(busy)}",
            f"- turns over {SLOW_TURN_SECONDS * 1000:.0f} ms: {sum(1 for t in turns if t > SLOW_TURN_SECONDS):,}",
            f"- hold (delivery to its ack leaving): {_quantiles(holds)}",
        ]
        if flushes:
            sizes = sorted(size for size, _, _ in flushes)
            lines.append(
                f"- SQLite write batches: {len(flushes):,}, writes p50 {sizes[len(sizes) // 2]}, "
                f"CPU {sum(cpu for _, _, cpu in flushes):.2f} s, wall {sum(wall for _, wall, _ in flushes):.2f} s"
                f" (the loop held meanwhile); wall {_quantiles([wall for _, wall, _ in flushes])}"
            )
        lines += ["", "| ms in turns over 20 ms | callbacks | what |", "|---:|---:|---|"]
        for name, seconds in sorted(slow_time.items(), key=lambda item: -item[1])[:12]:
            lines.append(f"| {seconds * 1000:,.1f} | {slow_calls[name]:,} | `{name}` |")
        with open(output, "w") as summary:
            summary.write("\n".join(lines) + "\n")

    atexit.register(write)


def _patch_worker(
    delivered: dict[tuple[int, int], float], holds: list[float], flushes: list[tuple[int, float, float]]
) -> None:
    """Called on the first loop turn, when ``switchboard run`` has imported the runtime."""
    import worker.amqp as amqp
    import worker.runtime as runtime
    import worker.store.sqlite as sqlite
    from worker.dispatcher import Delivery

    def delivery(channel: Any, delivery_tag: int, *args: Any, **kwargs: Any) -> Delivery:
        delivered[(id(channel), delivery_tag)] = time.perf_counter()
        return Delivery(channel, delivery_tag, *args, **kwargs)

    runtime.Delivery = delivery  # type: ignore[attr-defined,assignment]
    send_acks = amqp.Channel.send_acks

    def timed_send_acks(self: Any) -> None:
        due = list(self._acks_due)
        send_acks(self)
        now = time.perf_counter()
        for tag in due:
            start = delivered.pop((id(self), tag), None)
            if start is not None:
                holds.append(now - start)

    amqp.Channel.send_acks = timed_send_acks  # type: ignore[method-assign]
    flush = sqlite.Connection._flush

    def timed_flush(self: Any) -> None:
        size = len(self._pending)
        wall, cpu = time.perf_counter(), time.process_time()
        flush(self)
        flushes.append((size, time.perf_counter() - wall, time.process_time() - cpu))

    sqlite.Connection._flush = timed_flush  # type: ignore[method-assign]


if _wanted():
    _install(os.environ["SWITCHBOARD_BENCH_LOOP_STATS"])
