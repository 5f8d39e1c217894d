"""Quiet hours: send only inside an account's window, in the recipient's local time.

The recipient's time zone comes from the number (libphonenumber's time-zone
data); a number that maps to several zones (most of North America by country
code alone, or a mobile range) uses the account's own time zone, so the rule
is predictable rather than a guess. Outside the window a command is deferred
to the window's next opening through the broker's delay queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as number_timezones

from worker.phone_numbers import parse_international


class WindowError(ValueError):
    """A sending window or time zone that cannot be read."""


@dataclass(frozen=True)
class SendingWindow:
    start: time
    end: time
    account_zone: ZoneInfo

    @classmethod
    def parse(cls, text: str, account_timezone: str = "UTC") -> SendingWindow:
        """``"08:00-21:00"`` (may wrap midnight: ``"22:00-06:00"``)."""
        try:
            start_text, end_text = (part.strip() for part in text.split("-"))
            start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
        except ValueError as exc:
            raise WindowError(f"sending window {text!r}: expected HH:MM-HH:MM") from exc
        if start == end:
            raise WindowError(f"sending window {text!r} is empty")
        try:
            zone = ZoneInfo(account_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise WindowError(f"unknown time zone {account_timezone!r}") from exc
        return cls(start, end, zone)

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def zone_for(self, number: str | None) -> ZoneInfo:
        """The recipient's zone when the number names exactly one, else the account's."""
        if not number:
            return self.account_zone
        try:
            parsed = parse_international(number)
        except phonenumbers.NumberParseException:
            return self.account_zone
        zones = [z for z in number_timezones.time_zones_for_number(parsed) if z != "Etc/Unknown"]
        if len(zones) == 1:
            try:
                return ZoneInfo(zones[0])
            except ZoneInfoNotFoundError:
                return self.account_zone
        return self.account_zone

    def next_opening(self, number: str | None, now: float) -> datetime | None:
        """None when sending is allowed at ``now``; else when the window opens next."""
        zone = self.zone_for(number)
        local = datetime.fromtimestamp(now, zone)
        if self.contains(local.time()):
            return None
        opening = local.replace(hour=self.start.hour, minute=self.start.minute, second=0, microsecond=0)
        if opening <= local:
            opening += timedelta(days=1)
        return opening
