"""Calendar periods in the operator's time zone: days, ISO weeks, months.

Budgets and refills reset at a calendar boundary (midnight, Monday 00:00, the
1st at 00:00) in ``billing.timezone``, not on a rolling window. A period is
its start and end (unix seconds) and a label that names it (``2026-12-02``,
``2026-W49``, ``2026-12``). Local midnight is found with ``zoneinfo``, so a
day with a daylight-saving change is 23 or 25 hours long.

The current period of each kind is remembered until it ends: the request
path asks ``current(kind, now)`` and gets a tuple back without any date
arithmetic, except once per period.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Budgets say daily/weekly/monthly, refills day/week/month: both name the same periods.
KINDS = {"daily": "day", "weekly": "week", "monthly": "month", "day": "day", "week": "week", "month": "month"}


class Period(NamedTuple):
    start: float  # unix seconds, inclusive
    end: float  # unix seconds, exclusive: the reset time
    label: str  # names the period: 2026-12-02, 2026-W49, 2026-12


def zone(name: str, where: str = "billing.timezone") -> ZoneInfo:
    """The time zone called ``name`` (an IANA name like ``Europe/Paris``), or ValueError naming ``where``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}: unknown time zone {name!r}; use an IANA name like 'UTC', "
                         "'Europe/Paris' or 'Asia/Kolkata'") from None


def _first_day(kind: str, day: date) -> date:
    if kind == "day":
        return day
    if kind == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_first_day(kind: str, first: date) -> date:
    if kind == "day":
        return first + timedelta(days=1)
    if kind == "week":
        return first + timedelta(days=7)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _label(kind: str, first: date) -> str:
    if kind == "day":
        return first.isoformat()
    if kind == "week":
        year, week, _ = first.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{first.year}-{first.month:02d}"


def period_at(kind: str, now: float, tz: ZoneInfo) -> Period:
    """The ``kind`` period (day, week, month, or daily, weekly, monthly) that holds ``now``."""
    kind = KINDS[kind]
    first = _first_day(kind, datetime.fromtimestamp(now, tz).date())
    nxt = _next_first_day(kind, first)
    start = datetime(first.year, first.month, first.day, tzinfo=tz).timestamp()
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()
    return Period(start, end, _label(kind, first))


class Calendar:
    """The current period of each kind, in one time zone, remembered until it ends."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._current: dict[str, Period] = {}

    def current(self, kind: str, now: float) -> Period:
        period = self._current.get(kind)
        if period is None or not period.start <= now < period.end:
            period = self._current[kind] = period_at(kind, now, self.tz)
        return period

    def local_iso(self, ts: float) -> str:
        """``ts`` as ISO 8601 in the calendar's zone (``2026-12-03T00:00:00+01:00``; UTC as ``Z``)."""
        text = datetime.fromtimestamp(ts, self.tz).isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
