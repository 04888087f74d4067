"""From raw results to what people and machines read: derived numbers, the table, the budget.

Derived per job and target: latency added versus ``direct`` (the bare mock)
and versus ``floor``, throughput as a ratio of the floor's. The budget check
compares tollway-full (tollway-core when full did not run) with the floor of
the same run. The cache scenario's jobs are compared with the same job on the
target without a cache (``added_latency_ms.vs_no_cache_p50``), and summed up
in ``data["cache"]``: per cache target, the exact-hit, semantic-hit and miss
p50, what a miss adds and what a hit saves.
"""

from __future__ import annotations

import itertools
import math

from .stats import median, median_interval, ratio

BUDGET = {"throughput_ratio": 1.0, "added_p50_ms": 0.3, "added_p99_ms": 0.1, "rss_growth": 0.10}
#: The jobs whose throughput is held to the floor's (issue 10 item 12: stream and not), and
#: the one-at-a-time jobs whose p99 must stay within ``added_p99_ms`` of the floor's.
THROUGHPUT_JOBS = ("throughput", "stream", "stream_whole")
ONE_AT_A_TIME_JOBS = ("latency", "stream_whole_c1")
#: How sure a check's interval over its rounds is (``rounds_verdict``), and the fewest rounds that give it.
CONFIDENCE = 0.95
FEWEST_ROUNDS = next(n for n in itertools.count(1) if median_interval([0.0] * n, CONFIDENCE)[2] >= CONFIDENCE)


def _get(res: dict | None, *path: str) -> float:
    cur = res
    for key in path:
        if not isinstance(cur, dict):
            return math.nan
        cur = cur.get(key)
    return float(cur) if isinstance(cur, int | float) else math.nan


def derive(data: dict) -> dict:
    """Add ``added_*`` and ``x_floor`` fields to every result in ``data["results"]``."""
    for by_target in data["results"].values():
        direct, floor = by_target.get("direct"), by_target.get("floor")
        for res in by_target.values():
            for metric in ("latency_ms", "ttfb_ms", "gap_ms"):
                if metric not in res:
                    continue
                res[f"added_{metric}"] = {
                    "vs_direct_p50": _get(res, metric, "p50") - _get(direct, metric, "p50"),
                    "vs_floor_p50": _get(res, metric, "p50") - _get(floor, metric, "p50"),
                    "vs_direct_p99": _get(res, metric, "p99") - _get(direct, metric, "p99"),
                    "vs_floor_p99": _get(res, metric, "p99") - _get(floor, metric, "p99"),
                }
            res["x_floor_rps"] = ratio(_get(res, "rps"), _get(floor, "rps"))
            # The capacity ratio from CPU per request: what throughput would be if the target
            # had its CPU to itself (robust to other load on a shared machine).
            res["x_floor_cpu"] = ratio(_get(floor, "cpu_us_per_req"), _get(res, "cpu_us_per_req"))
            rss = res.get("rss_mb")
            if isinstance(rss, dict) and len(rss) >= 2:
                ordered = [v for _, v in sorted(rss.items(), key=lambda kv: int(kv[0]))]
                first, last = ordered[0], ordered[-1]
                res["rss_growth"] = ratio(last, first) - 1.0 if first and last else math.nan
    data["cache"] = cache_summary(data)
    data["budget"] = budget(data)
    return data


CACHE_JOBS = {"cache_exact": "HIT", "cache_semantic": "SEMANTIC-HIT", "cache_miss": "MISS"}


def cache_summary(data: dict) -> dict:
    """Per target with the cache: p50 of each cache job, the share of requests that got the
    expected ``x-tollway-cache`` answer, and the differences with the reference without a
    cache (same jobs, same run). Also adds ``added_latency_ms.vs_no_cache_p50`` to those
    results."""
    results, targets = data["results"], data.get("targets", {})
    labels = [label for label in CACHE_JOBS if label in results]
    if not labels:
        return {}
    with_cache = [n for n, t in targets.items() if t.get("cache")]
    names = list(dict.fromkeys(n for label in labels for n in results[label]))
    reference = next((n for n in names if n not in with_cache), None)
    out: dict = {"reference": reference, "targets": {}}
    for label in labels:
        by_target = results[label]
        ref = by_target.get(reference)
        for res in by_target.values():
            res.setdefault("added_latency_ms", {})["vs_no_cache_p50"] = (
                _get(res, "latency_ms", "p50") - _get(ref, "latency_ms", "p50"))
    for name in with_cache:
        if not any(name in results[label] for label in labels):
            continue
        row: dict = {}
        for label in labels:
            res = results[label].get(name)
            if res is None:
                continue
            job = label.removeprefix("cache_")
            want = CACHE_JOBS[label]
            row[f"{job}_p50_ms"] = _get(res, "latency_ms", "p50")
            row[f"{job}_p99_ms"] = _get(res, "latency_ms", "p99")
            row[f"{job}_as_meant"] = f"{(res.get('cache_status') or {}).get(want, 0)}/{res.get('ok', 0)} {want}"
            row[f"{job}_vs_no_cache_p50_ms"] = res["added_latency_ms"]["vs_no_cache_p50"]
        out["targets"][name] = row
    return out

def budget(data: dict) -> dict:
    """The issue's budget, checked on this run's numbers."""
    results = data["results"]
    subject = next((n for n in ("tollway-full", "tollway-core")
                    if any(n in by_t for by_t in results.values())), None)
    if subject is None or not any("floor" in by_t for by_t in results.values()):
        return {"subject": subject, "checks": [], "note": "needs the floor and a tollway target"}
    checks = []

    def check(name: str, value: float, ok: bool | None, want: str, rounds: list[float] | None = None,
              bound: tuple[float, bool] | None = None) -> None:
        entry = {"check": name, "value": value, "want": want, "rounds": rounds or [],
                 "ok": None if ok is None or math.isnan(value) else bool(ok)}
        if rounds and bound is not None:
            entry.update(rounds_verdict(rounds, *bound))
        checks.append(entry)

    runs = data.get("runs") or {}
    for label in THROUGHPUT_JOBS:
        if label in results and subject in results[label]:
            x = results[label][subject].get("x_floor_rps", math.nan)
            # Their ratio per round shows how much of the median is the machine's noise.
            rounds = [mine.get("rps", 0) / floor["rps"] for mine, floor in _paired(runs, label, subject)
                      if floor.get("rps")]
            check(f"{label} vs floor", x, x >= BUDGET["throughput_ratio"], f">= {BUDGET['throughput_ratio']}x",
                  rounds if len(rounds) > 1 else None, (BUDGET["throughput_ratio"], True))
            x = results[label][subject].get("x_floor_cpu", math.nan)
            check(f"{label} vs floor, from CPU/request", x, x >= BUDGET["throughput_ratio"],
                  f">= {BUDGET['throughput_ratio']}x")
    if "latency" in results and subject in results["latency"]:
        added = results["latency"][subject]["added_latency_ms"]["vs_floor_p50"]
        check("added p50 at c=1 vs floor (ms)", added, added <= BUDGET["added_p50_ms"],
              f"<= {BUDGET['added_p50_ms']} ms")
    for label in ONE_AT_A_TIME_JOBS:
        if label in results and subject in results[label] and "floor" in results[label]:
            added = _get(results[label][subject], "latency_ms", "p99") - _get(results[label]["floor"], "latency_ms",
                                                                              "p99")
            rounds = [_get(mine, "latency_ms", "p99") - _get(floor, "latency_ms", "p99")
                      for mine, floor in _paired(runs, label, subject)]
            check(f"{label}: added p99 at c=1 vs floor (ms)", added, added <= BUDGET["added_p99_ms"],
                  f"<= {BUDGET['added_p99_ms']} ms", rounds if len(rounds) > 1 else None,
                  (BUDGET["added_p99_ms"], False))
    if "soak" in results and subject in results["soak"]:
        g = results["soak"][subject].get("rss_growth", math.nan)
        check("RSS growth N/10 -> N", g, round(g, 9) <= BUDGET["rss_growth"], f"<= {BUDGET['rss_growth']:.0%}")
    bad = [label for label, by_t in results.items()
           if by_t.get(subject, {}).get("errors", 0) and not by_t.get("floor", {}).get("errors", 0)]
    check("errors where the floor has none", float(len(bad)), not bad, "none" + (f" ({', '.join(bad)})" if bad else ""))
    return {"subject": subject, "checks": checks}


def _paired(runs: dict, label: str, subject: str) -> zip:
    """(subject's round, floor's round) of job ``label``, round by round: each round ran the
    floor and the subject back to back, so a round's pair shares what the machine did then."""
    by_target = runs.get(label, {})
    return zip(by_target.get(subject, ()), by_target.get("floor", ()), strict=False)


def rounds_verdict(rounds: list[float], threshold: float, higher_is_better: bool) -> dict:
    """What the rounds of one check say beyond their median: the median of the per-round
    figures, a distribution-free interval for it (``stats.median_interval``) and whether the
    budget's threshold lies outside it (``beyond the noise``: met or missed whatever the
    machine did between rounds) or inside it (``within the noise``: this run cannot tell)."""
    lo, hi, coverage = median_interval(rounds, CONFIDENCE)
    met, missed = (lo >= threshold, hi < threshold) if higher_is_better else (hi <= threshold, lo > threshold)
    if coverage < CONFIDENCE:  # (fewer than 6 rounds: even the extremes are not a 95% interval)
        margin = f"too few rounds to tell ({len(rounds)}; {FEWEST_ROUNDS} give a {CONFIDENCE:.0%} interval)"
    else:
        margin = "met beyond the noise" if met else "missed beyond the noise" if missed else "within the noise"
    return {"rounds_median": median(rounds), "interval": [lo, hi], "coverage": coverage, "margin": margin}


# -- the table ----------------------------------------------------------------------------

def _f(value: float, fmt: str = "{:.3f}", signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return (("+" if signed and value >= 0 else "") + fmt.format(value))


COLUMNS = {
    "latency": [("p50 ms", ("latency_ms", "p50")), ("p90 ms", ("latency_ms", "p90")),
                ("p99 ms", ("latency_ms", "p99")), ("+p50 vs direct", ("added_latency_ms", "vs_direct_p50")),
                ("+p50 vs floor", ("added_latency_ms", "vs_floor_p50")), ("req/s", ("rps",)),
                ("CPU us/req", ("cpu_us_per_req",))],
    "throughput": [("req/s", ("rps",)), ("x floor", ("x_floor_rps",)), ("p50 ms", ("latency_ms", "p50")),
                   ("p99 ms", ("latency_ms", "p99")), ("CPU us/req", ("cpu_us_per_req",))],
    "stream": [("streams/s", ("rps",)), ("x floor", ("x_floor_rps",)), ("ttfb p50", ("ttfb_ms", "p50")),
               ("stream p50", ("latency_ms", "p50")), ("stream p99", ("latency_ms", "p99")),
               ("CPU us/req", ("cpu_us_per_req",))],
    "stream_whole_c1": [("p50 ms", ("latency_ms", "p50")), ("p90 ms", ("latency_ms", "p90")),
                        ("p99 ms", ("latency_ms", "p99")), ("+p50 vs floor", ("added_latency_ms", "vs_floor_p50")),
                        ("+p99 vs floor", ("added_latency_ms", "vs_floor_p99")), ("ttfb p50", ("ttfb_ms", "p50")),
                        ("streams/s", ("rps",)), ("CPU us/req", ("cpu_us_per_req",))],
    "stream_paced": [("ttfb p50", ("ttfb_ms", "p50")), ("+ttfb vs direct", ("added_ttfb_ms", "vs_direct_p50")),
                     ("gap p50", ("gap_ms", "p50")), ("+gap vs direct", ("added_gap_ms", "vs_direct_p50")),
                     ("stream p50", ("latency_ms", "p50"))],
    "rate": [("offered", ("offered_rps",)), ("req/s", ("rps",)), ("p50 ms", ("latency_ms", "p50")),
             ("p90 ms", ("latency_ms", "p90")), ("p99 ms", ("latency_ms", "p99")),
             ("+p50 vs direct", ("added_latency_ms", "vs_direct_p50"))],
    "cache": [("p50 ms", ("latency_ms", "p50")), ("p90 ms", ("latency_ms", "p90")),
              ("p99 ms", ("latency_ms", "p99")), ("+p50 vs no cache", ("added_latency_ms", "vs_no_cache_p50")),
              ("x-tollway-cache", ("cache_status",)), ("CPU us/req", ("cpu_us_per_req",))],
    "soak": [("requests", ("requests",)), ("req/s", ("rps",)), ("RSS@N/10 MB", ("rss_first",)),
             ("RSS@N MB", ("rss_last",)), ("growth", ("rss_growth",))],
}
CACHE_TITLES = {"cache_exact": "the same question every time: hits after the first",
                "cache_semantic": "paraphrases of cached questions: semantic hits",
                "cache_miss": "every question new: misses"}
INTEGER = {"req/s", "streams/s", "offered", "requests", "CPU us/req"}


def table(data: dict, reference_rate: float | None = None) -> str:
    """The results as fixed-width text, one block per job (the rate sweep shows only
    ``reference_rate`` unless it is None, then every rate)."""
    out = []
    for label, by_target in data["results"].items():
        scenario = data["labels"].get(label, label)
        if scenario == "rate" and reference_rate is not None and label != f"rate@{reference_rate:g}":
            continue
        cols = COLUMNS["stream" if scenario == "stream_whole" else scenario]
        header = ["target"] + [c for c, _ in cols] + ["errors", "RSS MB"]
        rows = []
        for name, res in by_target.items():
            rss = res.get("rss_mb") or {}
            ordered = [v for _, v in sorted(rss.items(), key=lambda kv: int(kv[0]))]
            res = {**res, "rss_first": ordered[0] if ordered else None, "rss_last": ordered[-1] if ordered else None}
            row = [name]
            for col, path in cols:
                if col == "x-tollway-cache":
                    counts = res.get("cache_status") or {}
                    row.append(" ".join(f"{k}:{v}" for k, v in counts.items()) or "-")
                    continue
                value = _get(res, *path)
                if col in INTEGER:
                    row.append(_f(value, "{:.0f}"))
                elif col == "x floor":
                    row.append(_f(value, "{:.2f}x"))
                elif col.endswith(" MB"):
                    row.append(_f(value, "{:.1f}"))
                elif col == "growth":
                    row.append(_f(value * 100, "{:.1f}%", signed=True))
                else:
                    row.append(_f(value, signed=col.startswith("+")))
            row.append(str(res.get("errors", 0)))
            row.append(_f(res.get("target_rss_mb"), "{:.1f}"))
            rows.append(row)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        out.append(f"{label}" + (f" ({CACHE_TITLES[label]})" if label in CACHE_TITLES else ""))
        for r in [header, *rows]:
            out.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        out.append("")
    c = data.get("cache") or {}
    for name, row in (c.get("targets") or {}).items():
        out.append(f"cache ({name} vs {c.get('reference') or 'no reference without a cache'}, p50, same run)")
        for job, what in (("exact", "an exact hit"), ("semantic", "a semantic hit"), ("miss", "a miss")):
            if f"{job}_p50_ms" in row:
                out.append(f"  {what}: {_f(row[f'{job}_p50_ms'])} ms "
                           f"({_f(row[f'{job}_vs_no_cache_p50_ms'], signed=True)} ms vs no cache; "
                           f"{row[f'{job}_as_meant']})")
        out.append("")
    b = data.get("budget") or {}
    if b.get("checks"):
        out.append(f"budget ({b['subject']} vs floor, same run)")
        for c in b["checks"]:
            mark = {True: "ok  ", False: "MISS", None: "?   "}[c["ok"]]
            rounds = f"; per round {' '.join(f'{r:.2f}' for r in c['rounds'])}" if c.get("rounds") else ""
            out.append(f"  {mark} {c['check']}: {_f(c['value'])} (want {c['want']}{rounds})")
            if "margin" in c:
                lo, hi = c["interval"]
                out.append(f"       the rounds' median {_f(c['rounds_median'])}, {c['coverage']:.0%} interval "
                           f"{_f(lo)} .. {_f(hi)}: {c['margin']}")
    return "\n".join(out)
