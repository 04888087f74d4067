"""GCRA (the generic cell rate algorithm) and the rate-limit headers.

Why GCRA and not a sliding window: it keeps ONE number per key and limit
(the "theoretical arrival time"), costs a few float operations per check,
has no window boundary where twice the limit can pass (the fixed-window
flaw) and no per-request log to store (the sliding-log cost), answers the
exact time until the next request fits (``Retry-After``) and until the limit
is fully replenished (the ``reset`` headers), and takes a weight per
request, which is what a tokens-per-minute limit needs. It allows a burst of
up to the full limit, then spreads requests evenly: ``rpm: 60`` admits 60 at
once, then one a second.

Times are wall-clock seconds (``time.time()``) so the state can be saved at
shutdown and loaded at start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

EPS = 1e-9


@dataclass(slots=True)
class Check:
    """One limit applied to one request."""

    kind: str  # "requests" or "tokens"
    label: str  # for people: "requests per minute"
    scope: str  # "" for the key, else the model name
    limit: int
    period: float  # seconds
    cost: int
    state: tuple  # the key of its TAT
    new_tat: float = 0.0

    @property
    def interval(self) -> float:
        return self.period / self.limit


def plan(check: Check, tat: float | None, now: float) -> float:
    """Seconds until this request would fit (0: it fits now); sets ``new_tat``."""
    base = now if tat is None or tat < now else tat
    check.new_tat = base + check.cost * check.interval
    over = check.new_tat - now - check.period
    return over if over > EPS else 0.0


def remaining(check: Check, tat: float | None, now: float) -> int:
    used = 0.0 if tat is None else max(tat - now, 0.0)
    return max(int((check.period - used) / check.interval + EPS), 0)


def reset_seconds(tat: float | None, now: float) -> float:
    """Until the limit is whole again."""
    return 0.0 if tat is None else max(tat - now, 0.0)


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``12ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(int(math.ceil(seconds * 1000)), 0)}ms"
    total = int(math.ceil(seconds - EPS))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


_ISO_CACHE: dict[int, str] = {}


def iso_at(ts: float) -> str:
    """The UTC time ``ts`` (rounded up to the second) in ISO 8601; memoised,
    since most answers in a second share a handful of reset times."""
    second = math.ceil(ts)
    text = _ISO_CACHE.get(second)
    if text is None:
        if len(_ISO_CACHE) > 4096:
            _ISO_CACHE.clear()
        text = _ISO_CACHE[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return text


def headers_for(checks: list[Check], tats: dict, now: float) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*-{requests,tokens}`` and the generic
    ``X-RateLimit-*`` (of the requests limit, else the tokens limit); for each
    kind the limit with the least left is shown."""
    out: dict[str, str] = {}
    tightest: dict[str, tuple[int, float, Check]] = {}
    for check in checks:
        if check.kind not in ("requests", "tokens"):
            continue
        tat = tats.get(check.state)
        left = remaining(check, tat, now)
        reset = reset_seconds(tat, now)
        best = tightest.get(check.kind)
        if best is None or (left / check.limit, -reset) < (best[0] / best[2].limit, -best[1]):
            tightest[check.kind] = (left, reset, check)
    for kind, (left, reset, check) in tightest.items():
        out[f"x-ratelimit-limit-{kind}"] = str(check.limit)
        out[f"x-ratelimit-remaining-{kind}"] = str(left)
        out[f"x-ratelimit-reset-{kind}"] = duration(reset)
    main = tightest.get("requests") or tightest.get("tokens")
    if main is not None:
        left, reset, check = main
        out["X-RateLimit-Limit"] = str(check.limit)
        out["X-RateLimit-Remaining"] = str(left)
        out["X-RateLimit-Reset"] = iso_at(now + reset)
    return out
