"""Time ranges and trend steps the pages offer, and which rollup table answers them.

Times are UTC. A range ends now; "24h" is the last 24 whole-or-current hours
(the hourly table), the others are whole UTC days ending today (the daily
table, or the hourly one when the step is an hour), so a range's totals are
the same whatever step its chart uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

RANGES = {"24h": 1, "7d": 7, "30d": 30, "90d": 90, "365d": 365}
STEPS = ("hour", "day", "week", "month")
DEFAULT_STEP = {"24h": "hour", "7d": "day", "30d": "day", "90d": "week", "365d": "month"}


@dataclass(frozen=True)
class Range:
    name: str
    step: str
    start: int  # unix seconds, inclusive
    end: int  # unix seconds, exclusive (the end of the current hour or day)
    grain: str  # "hour" or "day": which rollup tables answer it

    @property
    def seconds(self) -> int:
        return self.end - self.start


def steps_for(name: str) -> tuple[str, ...]:
    if name == "24h":
        return ("hour",)
    if name == "7d":
        return ("hour", "day")
    return ("day", "week", "month")


def parse_range(name: str | None, step: str | None, now: float | None = None) -> Range:
    """The range for the query's ``range`` and ``step``; unknown values fall back to the defaults."""
    now = time.time() if now is None else now
    name = name if name in RANGES else "7d"
    allowed = steps_for(name)
    step = step if step in allowed else DEFAULT_STEP[name]
    if name == "24h":
        hour = int(now // 3600) * 3600
        return Range(name, step, hour - 23 * 3600, hour + 3600, "hour")
    today = int(now // 86400) * 86400
    start = today - (RANGES[name] - 1) * 86400
    return Range(name, step, start, today + 86400, "hour" if step == "hour" else "day")


def step_start(ts: int, step: str) -> int:
    """The start of the hour, day, ISO week (Monday) or month holding ``ts``."""
    if step == "hour":
        return ts // 3600 * 3600
    day = ts // 86400 * 86400
    if step == "day":
        return day
    moment = datetime.fromtimestamp(day, UTC)
    if step == "week":
        return int((moment - timedelta(days=moment.weekday())).timestamp())
    return int(moment.replace(day=1).timestamp())


def step_starts(rng: Range) -> list[int]:
    """Every step in the range, in order (for zero-filled charts)."""
    out: list[int] = []
    unit = 3600 if rng.step == "hour" else 86400
    for ts in range(rng.start, rng.end, unit):
        s = step_start(ts, rng.step)
        if not out or out[-1] != s:
            out.append(s)
    return out


def label(ts: int, step: str) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    if step == "hour":
        return moment.strftime("%b %d %H:00")
    if step == "week":
        return "week of " + moment.strftime("%b %d")
    if step == "month":
        return moment.strftime("%B %Y")
    return moment.strftime("%a %b %d")
