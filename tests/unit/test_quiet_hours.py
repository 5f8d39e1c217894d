"""Sending windows: parsing, wrap-around, and whose time zone decides."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest

from worker.quiet_hours import SendingWindow, WindowError


def at(hour: int, minute: int, zone: str) -> float:
    return datetime(2026, 7, 1, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


def test_inside_the_window_sends_now() -> None:
    """Inside the window there is nothing to wait for."""
    window = SendingWindow.parse("08:00-21:00", "America/Chicago")
    assert window.next_opening(None, at(12, 0, "America/Chicago")) is None


def test_before_opening_waits_until_today_s_opening() -> None:
    """At 06:00 the next opening is 08:00 the same day."""
    window = SendingWindow.parse("08:00-21:00", "America/Chicago")
    opening = window.next_opening(None, at(6, 0, "America/Chicago"))
    assert opening is not None and (opening.day, opening.hour) == (1, 8)


def test_window_that_wraps_midnight() -> None:
    """A 22:00-06:00 window is open at 23:00 and 05:00, closed at noon."""
    window = SendingWindow.parse("22:00-06:00", "UTC")
    assert window.contains(time(23, 0)) and window.contains(time(5, 0))
    assert not window.contains(time(12, 0))


def test_single_zone_number_uses_its_zone() -> None:
    """A number that maps to one zone (London) is judged in that zone."""
    window = SendingWindow.parse("08:00-21:00", "America/New_York")
    assert window.zone_for("+442079460000") == ZoneInfo("Europe/London")


def test_ambiguous_or_missing_number_uses_the_account_zone() -> None:
    """Without a number, or with one the data cannot place, the account's zone decides."""
    window = SendingWindow.parse("08:00-21:00", "America/Denver")
    assert window.zone_for(None) == ZoneInfo("America/Denver")
    assert window.zone_for("not a number") == ZoneInfo("America/Denver")


@pytest.mark.parametrize("text", ["8-21", "08:00-08:00", "08:00"])
def test_bad_windows_are_refused(text: str) -> None:
    """A window that cannot be read is a configuration error, not a silent no-op."""
    with pytest.raises(WindowError):
        SendingWindow.parse(text)
