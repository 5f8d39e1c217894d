"""worker.logging: the fused line processor and the line writer, without a worker."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import pytest
import structlog

from worker import logging as worker_logging
from worker.logging import LineWriter, prepare_line


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _stock(method_name: str, event_dict: dict[str, Any]) -> Any:
    """The processors ``prepare_line`` stands for, one call each, as they were configured before."""
    for processor in (
        worker_logging.merge_context,
        structlog.processors.add_log_level,
        worker_logging.add_timestamp,
        structlog.processors.format_exc_info,
        worker_logging.mask_processor,
    ):
        event_dict = processor(None, method_name, event_dict)  # type: ignore[assignment]
    return event_dict


def _error() -> ValueError:
    try:
        raise ValueError("number +18885555555 rejected")
    except ValueError as exc:
        return exc


LINES: list[tuple[str, dict[str, Any]]] = [
    ("info", {"event": "command finished", "status": "succeeded", "code": None, "duration_ms": 12.5}),
    ("info", {"event": "sent to +18885553333", "to": "+1 (888) 555-4444", "command_id": "18885553333"}),
    ("warn", {"event": "nested", "details": {"to": ["+18885553333", 7], "n": "+18885550000"}}),
    ("exception", {"event": "failed", "exc_info": _error()}),
    ("error", {"event": "failed", "exc_info": False}),
    ("debug", {"event": "dates 2026-01-01 and short 12345 stay", "status": "done"}),
]


@pytest.mark.parametrize(("method_name", "event_dict"), LINES)
def test_the_fused_processor_gives_the_line_the_stock_processors_give(
    monkeypatch: pytest.MonkeyPatch, method_name: str, event_dict: dict[str, Any]
) -> None:
    monkeypatch.setattr(worker_logging.time, "time_ns", lambda: 1_790_000_000_123_456_000)
    worker_logging.clear_context()
    worker_logging.bind_context(command_id="cmd-1", type="send_text", account="+18885559999")
    for _ in range(2):  # the second time, the clean values come from the memo
        assert prepare_line(None, method_name, dict(event_dict)) == _stock(method_name, dict(event_dict))


def test_values_with_a_number_are_masked_every_time_and_never_remembered() -> None:
    worker_logging.clear_context()
    for _ in range(3):
        line = prepare_line(None, "info", {"event": "texting +18885553333", "status": "sent"})
        assert line["event"] == "texting +1*******33"
    assert "texting +18885553333" not in worker_logging._clean
    assert "sent" in worker_logging._clean


async def test_on_the_loop_a_turns_lines_go_in_one_write_at_its_end() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    for n in range(5):
        writer.write(f"line {n}")
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    assert stream.getvalue() == "".join(f"line {n}\n" for n in range(5))
    assert stream.writes == 1


def test_without_a_loop_a_line_is_written_at_once() -> None:
    stream = CountingStream()
    LineWriter(stream).write("alone")
    assert stream.getvalue() == "alone\n"


async def test_a_line_from_another_thread_goes_at_once_after_the_waiting_ones() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    writer.write("first, on the loop")
    thread = threading.Thread(target=writer.write, args=("second, from a thread",))
    thread.start()
    thread.join()
    assert stream.getvalue() == "first, on the loop\nsecond, from a thread\n"


def test_lines_of_a_loop_that_closed_before_its_turn_ended_are_not_held_back() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)

    async def log_and_leave() -> None:
        writer.write("logged as the loop stops")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log_and_leave())
    loop.close()  # the flush it scheduled never runs
    writer.write("after")
    assert stream.getvalue() == "logged as the loop stops\nafter\n"
    writer.write("and after that")
    assert stream.getvalue().endswith("and after that\n")


class ClosedStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError("the collector went away")


def test_a_stream_that_is_gone_loses_the_lines_but_not_the_caller(capfd: pytest.CaptureFixture[str]) -> None:
    writer = LineWriter(ClosedStream())
    writer.write("nowhere to go")  # no loop: written at once, and the write fails
    assert "1 log lines lost" in capfd.readouterr().err
    writer.write("still logging")  # the writer keeps working; nothing is held back
    assert writer._lines == []


def _configured_lines(monkeypatch: pytest.MonkeyPatch, direct: bool) -> list[str]:
    """The lines ``configure("INFO", "json")`` writes for LINES' info lines, with or without the direct ``info``."""
    stream = io.StringIO()
    monkeypatch.setattr(worker_logging.sys, "stdout", stream)
    monkeypatch.setattr(worker_logging.time, "time_ns", lambda: 1_790_000_000_123_456_000)
    if not direct:
        monkeypatch.setattr(worker_logging, "_direct_info", lambda base, writer: base)
    worker_logging.configure("INFO", "json")
    worker_logging.clear_context()
    worker_logging.bind_context(command_id="cmd-1", type="send_text", account="+18885559999")
    logger = structlog.get_logger("switchboard.test").bind()
    assert ("DirectInfo" in type(logger).info.__qualname__) is direct
    for method_name, event_dict in LINES:
        if method_name == "info":
            fields = dict(event_dict)
            logger.info(fields.pop("event"), **fields)
    logger.info("with %s", "interpolation")
    worker_logging._flush_at_exit()
    return stream.getvalue().splitlines()


def test_the_direct_info_writes_the_line_structlogs_info_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own ``info`` (one line a command) skips structlog's layers, not a byte of the line."""
    try:
        direct = _configured_lines(monkeypatch, direct=True)
        stock = _configured_lines(monkeypatch, direct=False)
    finally:
        monkeypatch.undo()  # the real stdout again, then the configuration the other tests had
        worker_logging.configure("INFO", "json")
    assert len(direct) == 3
    assert direct == stock


def test_captured_logs_still_see_the_lines_of_the_direct_info() -> None:
    """structlog's capture_logs swaps the processors in place: the direct ``info`` must notice and step aside."""
    worker_logging.configure("INFO", "json")
    logger = structlog.get_logger("switchboard.test").bind()
    with structlog.testing.capture_logs() as captured:
        logger.info("captured", n=1)
    assert captured == [{"event": "captured", "n": 1, "log_level": "info"}]
