"""structlog setup: JSON lines off a TTY, console on a TTY, phone numbers masked, all on stdout.

Libraries that log through the standard library (pika, aiohttp, asyncio, and
``warnings``) go through the same processors, so every line is JSON and masked;
so do uncaught exceptions, in the main thread, in other threads (the vendor
sandboxes) and in ``__del__`` methods (Python would print those as plain text
on stderr).

Context about the command being processed (``command_id``, ``type``,
``attempt``, ``vendor``) is bound by the dispatcher (:func:`clear_context`,
:func:`bind_context`), so every line logged while a command runs carries it,
handlers included. It is one contextvar holding one dict per command, not
structlog's contextvar per key: binding five keys that way cost more than the
rest of the logging of a command (issue 16).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any

import orjson
import structlog

# An E.164-ish run of digits (7+), optionally with a leading +: keep the
# country code's first digits and the last two so operators can still tell
# numbers apart without the log holding anyone's number.
# A run counts as a phone number with a leading + and 8+ digits, or 10+ digits
# without one (so dates and durations stay readable).
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d\- ().]{5,}\d(?![\w])")


_context: ContextVar[dict[str, Any] | None] = ContextVar("switchboard_log_context", default=None)


def clear_context() -> None:
    """Start a fresh context for this task (and the tasks it starts): one command's keys."""
    _context.set({})


def bind_context(**fields: Any) -> None:
    """Add keys to every line logged from here on in this context (after :func:`clear_context`)."""
    context = _context.get()
    if context is None:
        _context.set(fields)
    else:
        context.update(fields)


def context() -> dict[str, Any]:
    """A copy of the keys bound in this context."""
    return dict(_context.get() or {})


def merge_context(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the bound keys first, the line's own keys win."""
    context = _context.get()
    if not context:
        return event_dict
    return {**context, **event_dict}


_second: tuple[int, str] = (-1, "")
"""The last whole second formatted (``2026-01-01T00:00:00``): many lines share it."""


def add_timestamp(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: ``timestamp`` as ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-01-01T00:00:00.123456Z``), the date and time formatted once a second, not per line."""
    global _second
    whole, nanos = divmod(time.time_ns(), 1_000_000_000)
    second, text = _second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    micros = nanos // 1000
    event_dict["timestamp"] = f"{text}.{micros:06d}Z" if micros else f"{text}Z"
    return event_dict


def _mask_match(match: re.Match[str]) -> str:
    run = match.group(0)
    digits = sum(ch.isdigit() for ch in run)
    if digits < (8 if run.startswith("+") else 10):
        return run
    head = run[:2] if run.startswith("+") else run[:1]
    return f"{head}{'*' * 7}{run[-2:]}"


def mask_phone_numbers(text: str) -> str:
    """``+18885553333`` -> ``+1*******33``; dates and short numbers untouched."""
    return _PHONE.sub(_mask_match, text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_phone_numbers(value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


_UNMASKED_KEYS = frozenset(
    {"timestamp", "command_id", "event_id", "attempt", "duration_ms", "level", "trace_id"}
)

_CLEAN_MAX_LENGTH = 64
_CLEAN_MAX_ENTRIES = 4096
_clean: set[str] = set()
"""Short values already found to hold no phone number (types, vendors, accounts, statuses, the
line's message): most of a line's values, the same on every line. Numbers are never kept here."""


_NESTED = (str, dict, list, tuple)
"""What ``_mask_value`` looks into (a tuple: ``str | dict | ...`` builds a union at every call)."""


def mask_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask phone numbers in every value but ids and times."""
    for key, value in event_dict.items():
        if key in _UNMASKED_KEYS:
            continue
        if type(value) is str:  # most values: the regex at once, no _mask_value dispatch
            if value in _clean:
                continue
            masked = _PHONE.sub(_mask_match, value)
            if masked is not value and masked != value:
                event_dict[key] = masked
            elif len(value) <= _CLEAN_MAX_LENGTH:
                if len(_clean) >= _CLEAN_MAX_ENTRIES:
                    _clean.clear()
                _clean.add(value)
        elif isinstance(value, _NESTED):
            event_dict[key] = _mask_value(value)
    return event_dict


_format_exc_info = structlog.processors.format_exc_info
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}
"""As ``add_log_level`` names them: the other methods are their levels."""


def prepare_line(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``merge_context``, ``add_log_level``, ``add_timestamp``,
    ``format_exc_info`` and ``mask_processor`` in that order, as one call: the same line,
    without four more processor calls on each of a busy worker's lines (one per command)."""
    event_dict = merge_context(logger, method_name, event_dict)
    event_dict["level"] = _LEVEL_OF_METHOD.get(method_name, method_name)
    event_dict = add_timestamp(logger, method_name, event_dict)
    if "exc_info" in event_dict:  # format_exc_info changes nothing without the key
        event_dict = _format_exc_info(logger, method_name, event_dict)
    return mask_processor(logger, method_name, event_dict)


def _render_json(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> str:
    """structlog's ``JSONRenderer`` with orjson (``str()`` for what JSON cannot hold), without its layers of calls."""
    return orjson.dumps(event_dict, default=str).decode()


class LineWriter:
    """Rendered lines on their way to the stream: on the event loop, written once a loop turn.

    A busy worker logs a line per command; a write and a flush per line cost more than
    rendering it. A line logged on the loop's thread waits for the end of the turn (a few
    milliseconds at most, even under load), then that turn's lines go in one write; a line
    from any other thread, or with no loop running, is written at once, with any waiting
    before it, so lines keep their order. Lines still waiting at exit are written then; a
    process killed outright loses at most the lines of its last turn.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._flush_on: asyncio.AbstractEventLoop | None = None
        """The loop whose next turn writes the waiting lines."""

    def write(self, line: str) -> None:
        loop = asyncio._get_running_loop()
        with self._lock:
            self._lines.append(line)
            if loop is not None and loop is self._flush_on:
                return
            if loop is not None and self._flush_on is None and threading.current_thread() is _MAIN_THREAD:
                self._flush_on = loop
                loop.call_soon(self.flush)
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            self._flush_on = None
            if not lines:
                return
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError) as exc:
                # The stream is gone (a closed pipe): raising here would fail the command that
                # logged, or, on the loop, log this again every turn. Say so where we still can.
                stderr = sys.__stderr__
                if stderr is not None:
                    with contextlib.suppress(Exception):
                        stderr.write(f"switchboard: {len(lines)} log lines lost: {exc!r}\n")
                        stderr.flush()


_MAIN_THREAD = threading.main_thread()


class _LineLogger:
    """structlog's logger: hands the rendered line to the :class:`LineWriter` (as ``PrintLogger`` prints it)."""

    def __init__(self, writer: LineWriter) -> None:
        self._write = writer.write

    def msg(self, message: str) -> None:
        self._write(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LineLoggerFactory:
    def __init__(self, writer: LineWriter) -> None:
        self.logger = _LineLogger(writer)

    def __call__(self, *args: Any) -> _LineLogger:
        return self.logger


class _LineHandler(logging.Handler):
    """The standard library's lines (pika, aiohttp, asyncio, warnings) through the same writer, in order."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record))
        except Exception:
            self.handleError(record)


_writer: LineWriter | None = None


def _flush_at_exit() -> None:
    if _writer is not None:
        _writer.flush()


atexit.register(_flush_at_exit)


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("switchboard").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: a thread died of an exception (Python would print it on stderr)."""
    if args.exc_type is SystemExit:
        return  # threading's own hook ignores it too
    thread = args.thread.name if args.thread is not None else "?"
    _log_exception(logging.CRITICAL, f"uncaught exception in thread {thread}", args.exc_value, args.exc_type)


def _log_unraisable(args: Any) -> None:
    """``sys.unraisablehook``: an exception Python cannot raise (in ``__del__``, a finaliser)."""
    where = f": {repr(args.object)[:200]}" if args.object is not None else ""
    _log_exception(
        logging.ERROR, f"{args.err_msg or 'Exception ignored in'}{where}", args.exc_value, args.exc_type
    )


def _log_exception(
    level: int, message: str, value: BaseException | None, kind: type[BaseException] | None
) -> None:
    logger = logging.getLogger("switchboard")
    if value is not None:
        logger.log(level, message, exc_info=(type(value), value, value.__traceback__))
    else:
        logger.log(level, f"{message} ({getattr(kind, '__name__', 'unknown')})")


def _direct_info(base: type[Any], writer: LineWriter) -> type[Any]:
    """``base`` with an ``info`` that renders its JSON line itself: the same line, fewer layers.

    structlog's ``info`` copies the context, calls each processor through ``_process_event``
    and then the logger by name: about a third of the cost of the one line a command a busy
    worker writes (``bench.log_micro``). A logger bound to other processors (``capture_logs``
    in a test, another configuration) or asked to interpolate ``%s`` takes structlog's way.
    """

    pipeline = [prepare_line, _render_json]

    class DirectInfo(base):  # type: ignore[misc]
        def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
            # Compared by content: structlog's capture_logs swaps the processors inside the same list.
            if args or self._processors != pipeline:
                return super().info(event, *args, **kw)
            event_dict = self._context.copy()
            event_dict.update(kw)
            event_dict["event"] = event
            writer.write(_render_json(None, "info", prepare_line(None, "info", event_dict)))
            return None

    DirectInfo.__name__ = DirectInfo.__qualname__ = base.__name__
    return DirectInfo


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog, and route every stdlib logger (pika, aiohttp, asyncio, warnings) through it.

    One pipeline, one stream: a line from a library is rendered by the same
    processors as ours (timestamp, level, phone masking, JSON off a TTY), so
    nothing reaches the log collector as plain text and nothing escapes masking.
    """
    stream = sys.stdout  # docs/runbook.md: every line, ours and every library's, on stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer(colors=stream.isatty()) if use_console else _render_json
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    shared: list[Any] = [
        merge_context,
        structlog.processors.add_log_level,
        add_timestamp,
    ]
    global _writer
    if _writer is not None:
        _writer.flush()  # what an earlier configuration still holds goes to its stream
    writer = _writer = LineWriter(stream)
    wrapper_class = structlog.make_filtering_bound_logger(numeric_level)
    if renderer is _render_json and numeric_level <= logging.INFO:
        wrapper_class = _direct_info(wrapper_class, writer)
    structlog.configure(
        processors=[prepare_line, renderer],
        wrapper_class=wrapper_class,
        logger_factory=_LineLoggerFactory(writer),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask_processor,
            renderer,
        ],
    )
    handler = _LineHandler(writer)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # pika and aiohttp are chatty below WARNING; their warnings and errors are what matter.
    root.setLevel(max(numeric_level, logging.WARNING))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_uncaught
    sys.unraisablehook = _log_unraisable


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
