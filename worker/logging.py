"""structlog setup: JSON lines off a TTY, console on a TTY, phone numbers masked.

Context about the command being processed (``command_id``, ``type``,
``attempt``, ``vendor``) is bound through contextvars by the dispatcher, so
every line logged while a command runs carries it, handlers included.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# An E.164-ish run of digits (7+), optionally with a leading +: keep the
# country code's first digits and the last two so operators can still tell
# numbers apart without the log holding anyone's number.
# A run counts as a phone number with a leading + and 8+ digits, or 10+ digits
# without one (so dates and durations stay readable).
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d\- ().]{5,}\d(?![\w])")


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


def mask_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask phone numbers in every value but ids and times."""
    for key, value in event_dict.items():
        if key not in _UNMASKED_KEYS and isinstance(value, str | dict | list | tuple):
            event_dict[key] = _mask_value(value)
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog (and stdlib logging of libraries) once at start-up."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # pika and aiohttp log through the stdlib; keep their noise at WARNING.
    logging.basicConfig(
        level=max(numeric_level, logging.WARNING),
        stream=sys.stderr,
        format="%(name)s %(levelname)s %(message)s",
    )


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
