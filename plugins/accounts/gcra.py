"""GCRA (the generic cell rate algorithm), and the texts of its headers (``limit_headers.py`` writes them).

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
shutdown and loaded at start-up. A rule's TAT is kept as ``(at, debt)``: the
time of its last take and how far past that time the TAT was (``TAT = at +
debt``), never as the sum. At a Unix time (~1.8e9 s) a float resolves only
~2.4e-7 s, coarser than one request of ``rpm: 100000000`` (6e-7 s) or a token
of ``tpm: 10000000000`` (6e-9 s), so adding an interval to an absolute TAT
rounded it (a token added nothing at all: such a limit admitted forever).
``debt`` is at most a period (60 s: resolved to 7e-15 s) and ``now - at`` is
exact (two close floats), so every limit's arithmetic is exact to a millionth
of its interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

EPS = 1e-9

#: A rule's state: (the time of its last take, seconds its TAT lies past that time).
Tat = tuple[float, float]


def reset_of(tat: Tat | None, now: float) -> float:
    """Seconds from ``now`` until the rule is fully replenished (0: it is)."""
    if tat is None:
        return 0.0
    debt = tat[1] - (now - tat[0])
    return debt if debt > 0.0 else 0.0


def left_of(rule: Rule, reset: float) -> int:
    """How many more requests (tokens) of cost 1 ``rule`` admits now, ``reset`` seconds
    from full: the count ``gcra_check`` would admit (the same EPS, in seconds)."""
    left = int((rule.period - reset + EPS) / rule.interval)
    return left if left > 0 else 0


def _duration(seconds: float) -> str:
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


_MS_TEXT = tuple(f"{ms}ms" for ms in range(1001))
_S_TEXT: dict[int, str] = {}


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``12ms``, ``1s``, ``6m0s``, ``1h2m3s``. The texts
    are memoised (a limit's reset is at most its period; the cache is bounded)."""
    if seconds < 1:
        ms = math.ceil(seconds * 1000)
        return _MS_TEXT[ms] if 0 <= ms <= 1000 else _duration(seconds)
    total = math.ceil(seconds - EPS)
    text = _S_TEXT.get(total)
    if text is None:
        if len(_S_TEXT) > 4096:
            _S_TEXT.clear()
        text = _S_TEXT[total] = _duration(seconds)
    return text


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One limit of one key (for one model), compiled once per key version."""

    tokens: bool  # a tokens limit (cost: the request's estimate), else requests (cost: 1)
    label: str  # for people: "requests per minute"
    scope: str  # "" for the key, else the model name
    limit: int
    period: float  # seconds
    interval: float  # period / limit: the TAT advance per unit of cost
    state: tuple  # the key of its TAT
    limit_text: str  # str(limit), for the headers

    @property
    def kind(self) -> str:
        return "tokens" if self.tokens else "requests"


class Refusal(NamedTuple):
    """Why ``take`` refused: the rule furthest over, and seconds until the request fits it."""

    rule: Rule
    wait: float


def gcra_check(tats: dict[tuple, Tat], rules: tuple[Rule, ...], tokens: int,
               now: float) -> tuple[Refusal | None, list[Tat]]:
    """GCRA over ``tats`` (state -> ``Tat``), changing nothing: (the refusal, or None and
    every rule's new ``Tat``)."""
    get = tats.get
    new_tats = []
    worst = None
    worst_wait = EPS  # a wait counts when over EPS; the longest one is reported
    for rule in rules:
        tat = get(rule.state)
        # how far past now the TAT is (never before now: GCRA's max(TAT, now))
        if tat is None or (debt := tat[1] - (now - tat[0])) < 0.0:
            debt = 0.0
        debt += (tokens if rule.tokens else 1) * rule.interval
        if debt - rule.period > worst_wait:
            worst, worst_wait = rule, debt - rule.period
        new_tats.append((now, debt))
    return (Refusal(worst, worst_wait) if worst is not None else None), new_tats
