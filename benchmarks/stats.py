"""Statistics for the benchmark: percentiles, summaries, medians of rounds, RSS.

Percentiles interpolate linearly between closest ranks (numpy's default
"linear" method), so ``percentile([1, 2, 3, 4], 50) == 2.5``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence


def percentile(samples: Sequence[float], p: float, *, presorted: bool = False) -> float:
    """The ``p``-th percentile (0..100) of ``samples``; NaN when there are none."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    if not samples:
        return math.nan
    data = samples if presorted else sorted(samples)
    rank = (len(data) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(data) - 1)
    frac = rank - lo
    return data[lo] + (data[hi] - data[lo]) * frac


def summarize(samples: Iterable[float], scale: float = 1.0) -> dict[str, float | int]:
    """n, mean, min, p50, p90, p99, max of ``samples`` (each multiplied by ``scale``,
    e.g. 1000 for seconds -> milliseconds)."""
    data = sorted(x * scale for x in samples)
    if not data:
        return {"n": 0, "mean": math.nan, "min": math.nan, "p50": math.nan, "p90": math.nan,
                "p99": math.nan, "max": math.nan}
    return {
        "n": len(data),
        "mean": math.fsum(data) / len(data),
        "min": data[0],
        "p50": percentile(data, 50, presorted=True),
        "p90": percentile(data, 90, presorted=True),
        "p99": percentile(data, 99, presorted=True),
        "max": data[-1],
    }


def median(values: Iterable[float]) -> float:
    """The median of the finite values; NaN when there are none."""
    data = [v for v in values if v is not None and not math.isnan(v)]
    return percentile(data, 50) if data else math.nan


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free interval for the median of what ``values`` were drawn from, and
    its coverage: ``(lo, hi, coverage)``, the k-th smallest and the k-th largest value.

    Each value falls below the true median with probability 1/2, independently (rounds of a
    benchmark on a machine whose speed drifts are nearly so), so the number below it is
    Binomial(n, 1/2) and the interval misses the median with probability 2 P(B < k). k is the
    largest rank whose coverage is at least ``confidence``; with too few values for it (fewer
    than 6 at 95%) the interval is the smallest and largest value, with the coverage they give.
    No assumption on the values' spread or shape: a round slow for every target counts once."""
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    n = len(data)
    if n == 0:
        return math.nan, math.nan, math.nan

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return data[k - 1], data[n - k], coverage(k)


COUNTERS = ("error_kinds", "cache_status")


def median_of_rounds(rounds: Sequence[dict]) -> dict:
    """Merge per-round result dicts: numbers become their median over the
    rounds, nested dicts are merged the same way, anything else keeps the
    first round's value. Counts are summed, not medianed: errors, requests,
    and the tallies in ``COUNTERS`` (by kind of error, by cache answer)."""
    if not rounds:
        return {}
    if len(rounds) == 1:
        return rounds[0]
    out: dict = {}
    for key, first in rounds[0].items():
        values = [r.get(key) for r in rounds]
        if key in COUNTERS and isinstance(first, dict):
            total: dict = {}
            for v in values:
                for k, n in (v or {}).items():
                    total[k] = total.get(k, 0) + n
            out[key] = dict(sorted(total.items()))
        elif isinstance(first, dict):
            out[key] = median_of_rounds([v for v in values if isinstance(v, dict)])
        elif isinstance(first, bool) or not isinstance(first, int | float):
            out[key] = first
        elif key in ("errors", "ok", "requests", "n"):
            out[key] = sum(v for v in values if isinstance(v, int | float))
        else:
            out[key] = median(float(v) for v in values if isinstance(v, int | float))
    return out


def ratio(value: float | None, reference: float | None) -> float:
    """value / reference, NaN when either is missing or the reference is 0."""
    if value is None or reference is None or reference == 0 or math.isnan(value) or math.isnan(reference):
        return math.nan
    return value / reference


def rss_mb(pid: int) -> float | None:
    """Resident set size of process ``pid`` in MiB (Linux /proc); None when unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` and of every process it started (all
    their threads; e.g. the workers of ``tollway serve --workers N``) so far; None when
    unknown. Per request, this is the measure least disturbed by other load on a shared
    machine."""
    own = _cpu_of(pid)
    if own is None:
        return None
    return own + sum(_cpu_of(child) or 0.0 for child in descendants(pid))


def _cpu_of(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out
