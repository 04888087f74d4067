"""What the dashboard reads: sums over the rollups, never a scan of the ledger.

Every function here is ONE query over a rollup table: hourly or daily (by
the range), and of the least detail that answers it (``rollups.VIEWS``):
keys summed away for totals, trends, errors and latency; models summed away
for spend by key or account; full detail only for one key (a customer, a
key's page), through its (key_id, bucket) index. Percentiles come from the
summed histograms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from plugins.accounts import rollups

from .ranges import Range, step_start, step_starts

# The figures summed for totals, series and breakdowns, in select order.
FIGURES = ("requests", "errors", "cost_micro_usd", "prompt_tokens", "completion_tokens", "cached_tokens",
           "cache_hits", "latency_ms_sum")
_SUMS = ", ".join(f"sum({c})" for c in FIGURES)
_LAT = rollups.hist_sums("lat")
_TTFB = rollups.hist_sums("ttfb")
N = rollups.NBUCKETS

BREAKDOWNS = {"key": "key_id", "account": "account_id", "model": "model", "provider": "provider"}
SORTS = ("requests", "errors", "error_rate", "cost", "tokens", "p50", "p95")


@dataclass(frozen=True)
class Scope:
    """Whose rows: everyone's (the operator) or one key's (a customer)."""

    key_id: str | None = None

    def table(self, rng: Range, view: str) -> str:
        """The rollup table for this range: ``view``, or full detail for one key."""
        return rollups.table(rng.grain, "" if self.key_id is not None else view)

    def where(self, rng: Range) -> tuple[str, list[Any]]:
        clauses, params = ["bucket >= ?", "bucket < ?"], [rng.start, rng.end]
        if self.key_id is not None:
            clauses.append("key_id = ?")
            params.append(self.key_id)
        return " where " + " and ".join(clauses), params


EVERYONE = Scope()


def _figures(values: Sequence[Any]) -> dict[str, Any]:
    out = {name: (float(v or 0) if name == "latency_ms_sum" else int(v or 0)) for name, v in zip(FIGURES, values,
                                                                                                   strict=True)}
    out["tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["error_rate"] = out["errors"] / out["requests"] if out["requests"] else 0.0
    return out


def _with_latency(out: dict[str, Any], lat: Sequence[Any], ttfb: Sequence[Any] | None = None) -> dict[str, Any]:
    counts = [int(v or 0) for v in lat]
    out["p50"] = rollups.percentile(counts, 0.5)
    out["p95"] = rollups.percentile(counts, 0.95)
    out["p99"] = rollups.percentile(counts, 0.99)
    if ttfb is not None:
        tcounts = [int(v or 0) for v in ttfb]
        out["ttft_samples"] = sum(tcounts)
        out["ttft_p50"] = rollups.percentile(tcounts, 0.5)
        out["ttft_p95"] = rollups.percentile(tcounts, 0.95)
    return out


async def totals(store, rng: Range, scope: Scope = EVERYONE) -> dict[str, Any]:
    where, params = scope.where(rng)
    row = await store.fetchone(f"select {_SUMS}, {_LAT} from {scope.table(rng, '_model')}{where}", params)
    n = len(FIGURES)
    return _with_latency(_figures(row[:n]), row[n:])


async def series(store, rng: Range, scope: Scope = EVERYONE) -> list[dict[str, Any]]:
    """One point per step of the range (zero-filled): the figures and p50/p95."""
    where, params = scope.where(rng)
    rows = await store.fetchall(f"select bucket, {_SUMS}, {_LAT} from {scope.table(rng, '_model')}{where} "
                                "group by bucket", params)
    n = len(FIGURES)
    merged: dict[int, list] = {}
    for r in rows:
        key = step_start(int(r[0]), rng.step)
        acc = merged.get(key)
        values = [v or 0 for v in r[1:]]
        if acc is None:
            merged[key] = values
        else:
            for i, v in enumerate(values):
                acc[i] += v
    out = []
    for ts in step_starts(rng):
        values = merged.get(ts) or [0] * (n + N)
        out.append({"t": ts, **_with_latency(_figures(values[:n]), values[n:])})
    return out


async def breakdown(store, rng: Range, by: str, sort: str = "cost", descending: bool = True,
                    limit: int = 200, scope: Scope = EVERYONE) -> list[dict[str, Any]]:
    """Figures per key, account, model or provider, sorted in SQL (top ``limit``)."""
    column = BREAKDOWNS[by]
    where, params = scope.where(rng)
    order = {"requests": "sum(requests)", "errors": "sum(errors)", "cost": "sum(cost_micro_usd)",
             "tokens": "sum(prompt_tokens) + sum(completion_tokens)",
             "error_rate": "sum(errors) * 1.0 / sum(requests)"}.get(sort)
    if order is None:  # p50 / p95 are computed after the query: sort in Python
        order, python_sort = "sum(requests)", sort
    else:
        python_sort = None
    table = scope.table(rng, "_key" if by in ("key", "account") else "_model")
    sql = (f"select {column}, {_SUMS}, {_LAT} from {table}{where} group by {column} "
           f"order by {order} {'desc' if descending else 'asc'}, {column} limit {int(limit)}")
    n = len(FIGURES)
    out = [{"name": r[0], **_with_latency(_figures(r[1:n + 1]), r[n + 1:])} for r in await store.fetchall(sql, params)]
    if python_sort:
        out.sort(key=lambda d: (d[python_sort] is None, d[python_sort] or 0), reverse=descending)
    return out


async def errors_by(store, rng: Range, scope: Scope = EVERYONE) -> dict[str, list[dict[str, Any]]]:
    """Errors by (status, code) and by provider."""
    where, params = scope.where(rng)
    table = scope.table(rng, "_model")
    rows = await store.fetchall(f"select status, error_code, provider, sum(requests) from {table}{where} "
                                "and status >= 400 group by status, error_code, provider", params)
    by_code: dict[tuple, int] = {}
    by_provider: dict[str, int] = {}
    for status, code, provider, n in rows:
        by_code[(int(status), code)] = by_code.get((int(status), code), 0) + int(n)
        by_provider[provider] = by_provider.get(provider, 0) + int(n)
    codes = [{"status": s, "code": c or "", "count": n} for (s, c), n in by_code.items()]
    providers = [{"provider": p or "", "count": n} for p, n in by_provider.items()]
    codes.sort(key=lambda d: -d["count"])
    providers.sort(key=lambda d: -d["count"])
    return {"codes": codes, "providers": providers}


async def latency_by_model(store, rng: Range, scope: Scope = EVERYONE) -> list[dict[str, Any]]:
    """Latency and time-to-first-token percentiles per model."""
    where, params = scope.where(rng)
    table = scope.table(rng, "_model")
    rows = await store.fetchall(f"select model, sum(requests), {_LAT}, {_TTFB} from {table}{where} "
                                "group by model order by sum(requests) desc", params)
    out = []
    for r in rows:
        item = {"model": r[0], "requests": int(r[1] or 0)}
        out.append(_with_latency(item, r[2:2 + N], r[2 + N:]))
    return out


async def cache_by_model(store, rng: Range, scope: Scope = EVERYONE) -> list[dict[str, Any]]:
    where, params = scope.where(rng)
    rows = await store.fetchall(f"select model, sum(requests), sum(cache_hits), sum(cost_micro_usd) "
                                f"from {scope.table(rng, '_model')}{where} group by model order by sum(requests) desc",
                                params)
    return [{"model": m, "requests": int(n or 0), "hits": int(h or 0),
             "hit_rate": int(h or 0) / int(n) if n else 0.0, "cost_micro_usd": int(c or 0)} for m, n, h, c in rows]
