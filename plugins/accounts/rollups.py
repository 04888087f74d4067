"""Rollups: the ledger pre-aggregated per hour and per day, for charts and usage answers.

Per grain (``hour``, ``day``) three tables of the same columns, at three
levels of detail, so that each question reads few rows:

- ``tollway_rollup_{grain}``: one row per time bucket and (key, account,
  model, provider, status, error code): one key's usage (customer pages).
- ``tollway_rollup_{grain}_model``: per (model, provider, status, error
  code), keys summed away: totals, trends, errors, latency, cache.
- ``tollway_rollup_{grain}_key``: per (key, account): spend by key or account.

A dimension a table does not keep is stored as '' (0 for the status). Each
row holds sums: requests, errors, cache hits, streams, four token counts, cost, the
latency and time-to-first-byte totals, rows whose tokens were estimated, and a fixed log-bucket histogram of
each (``lat_0..lat_41``, ``ttfb_0..ttfb_41``), so any set of rows can be
summed in SQL and still answer p50/p95/p99 (to within the bucket width: the
bounds grow by a factor of sqrt(2), so an estimate is within ~19% of the
true value, usually much closer).

They are kept by the ledger writer, in the same transaction as the ledger
rows they count (``rollup_upserts.py``): a rollup never disagrees with the ledger,
and nothing is done on the request path. ``rebuild`` recomputes them from the
ledger (``tollway rollups rebuild``; the accounts' migration 3 made them and
ran it once). A change of their shape is a new migration that drops, makes
and rebuilds them.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import repeat
from operator import add, floordiv, itemgetter
from typing import Any

log = logging.getLogger("tollway.accounts")

HOUR = "tollway_rollup_hour"
DAY = "tollway_rollup_day"
GRAINS = ((HOUR, 3600), (DAY, 86400))
# view suffix -> the dimensions it keeps (besides the bucket)
VIEWS = {"": ("key_id", "account_id", "model", "provider", "status", "error_code"),
         "_model": ("model", "provider", "status", "error_code"),
         "_key": ("key_id", "account_id")}
TABLES = tuple((base + suffix, seconds) for base, seconds in GRAINS for suffix in VIEWS)


def table(grain: str, view: str = "") -> str:
    """``table("day", "_model")`` -> ``tollway_rollup_day_model``."""
    return f"tollway_rollup_{grain}{view}"


# Histogram bucket i (1 <= i < 41) holds latencies in [BOUNDS[i-1], BOUNDS[i]) ms;
# bucket 0 is under 1 ms, bucket 41 at least 2^20 ms (17.5 minutes).
BOUNDS: tuple[float, ...] = tuple(2 ** (i / 2) for i in range(41))
NBUCKETS = len(BOUNDS) + 1

DIMENSIONS = ("bucket", "key_id", "account_id", "model", "provider", "status", "error_code")
SUMS = ("requests", "errors", "cache_hits", "streams", "prompt_tokens", "completion_tokens", "cached_tokens",
        "reasoning_tokens", "cost_micro_usd", "latency_ms_sum", "ttfb_count", "ttfb_ms_sum", "estimated")
LAT = tuple(f"lat_{i}" for i in range(NBUCKETS))
TTFB = tuple(f"ttfb_{i}" for i in range(NBUCKETS))
MEASURES = SUMS + LAT + TTFB
COLUMNS = DIMENSIONS + MEASURES
_FIRST_LAT = len(SUMS)
_FIRST_TTFB = len(SUMS) + NBUCKETS


def _schema(table: str) -> tuple[str, ...]:
    sums = ",\n".join(f"{c} {'double precision' if c.endswith('_ms_sum') else 'bigint'} not null default 0"
                      for c in SUMS)
    hist = ",\n".join(f"{c} integer not null default 0" for c in LAT + TTFB)
    return (
        f"""create table if not exists {table} (
            bucket bigint not null, key_id text not null, account_id text not null, model text not null,
            provider text not null, status integer not null, error_code text not null,
            {sums},
            {hist},
            primary key (bucket, key_id, account_id, model, provider, status, error_code))""",
    ) + ((f"create index if not exists {table}_by_key on {table} (key_id, bucket)",) if table in (HOUR, DAY) else ())


SCHEMA = tuple(sql for name, _ in TABLES for sql in _schema(name))


def bucket_of(ms: float) -> int:
    """The histogram bucket of a latency in milliseconds."""
    return bisect_right(BOUNDS, ms)


@lru_cache(maxsize=8)
def _positions(columns: tuple[str, ...]) -> tuple[int, ...]:
    """Where the columns the aggregator reads are in a ledger row of these columns."""
    ix = {c: i for i, c in enumerate(columns)}
    return tuple(ix[c] for c in ("time", "key_id", "account_id", "model", "provider", "status", "error_code",
                                 "cache_hit", "stream", "prompt_tokens", "completion_tokens", "cached_tokens",
                                 "reasoning_tokens", "cost_micro_usd", "latency_ms", "ttfb_ms", "estimated"))


def _count_buckets(acc: list, first: int, values: Sequence[float]) -> tuple[int, int]:
    """Add ``values`` to the histogram at ``acc[first:first + NBUCKETS]``: each in bucket
    ``bucket_of(value)``. Sorted, so that it takes a binary search per bucket the values
    span (a few) rather than one per value. The buckets it counted in: ``[low, high]``."""
    ordered = sorted(values)
    low, high = bisect_right(BOUNDS, ordered[0]), bisect_right(BOUNDS, ordered[-1])
    start = 0
    for bucket in range(low, high):
        end = bisect_left(ordered, BOUNDS[bucket], start)  # the values below its upper bound
        acc[first + bucket] += end - start
        start = end
    acc[first + high] += len(ordered) - start
    return low, high


class Aggregator:
    """Sums ledger rows into hourly (and from those, daily) rollup rows."""

    def __init__(self, columns: Sequence[str]) -> None:
        self._ix = ix = _positions(tuple(columns))  # once per column list, not once per flush
        self._time_of = itemgetter(ix[0])
        self._dims_of = itemgetter(*ix[1:7])  # key, account, model, provider, status, error code
        self.hours: dict[tuple, list] = {}
        # The histogram buckets any row added counted in: [lat low, lat end, ttfb low, ttfb end)
        # (empty: NBUCKETS, 0); every other bucket of every rollup row is 0 (``rollup_upserts.py``).
        self.span = [NBUCKETS, 0, NBUCKETS, 0]

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        """Add ledger rows (tuples in the ledger's column order). Written for
        speed: it runs in the server's process, once per row written. The rows
        are grouped by (hour, dimensions) and each group's columns summed in C
        (``zip``, ``sum``, ``map``): a flush's rows mostly share one key, model
        and status, and a Python statement per row and column cost ~12k
        instructions a row where this costs ~4k. Each column is summed in row
        order, onto what the group held, as adding row by row did."""
        if not isinstance(rows, (list, tuple)):
            rows = list(rows)
        if not rows:
            return
        dims_of = self._dims_of
        first = dims_of(rows[0])
        if dims_of(rows[-1]) == first:
            # Maybe one key's traffic, in one hour: told on the slice's columns, taken once, which
            # are then what is summed (``_one_group``). (Rows of keys taking turns differ at the
            # first and last, told at once.)
            cols = list(zip(*rows, strict=True))
            hour = self._one_group(cols, first)
            if hour is not None:
                self._sum(hour, first, cols)
                return
        groups: dict[tuple, list] = {}
        times = list(map(self._time_of, rows))
        hour = min(times) // 3600
        if max(times) // 3600 == hour and sum(times) == sum(times):  # (a NaN time: grouped row by row)
            # Every row in one hour (a flush spans a fraction of a second): grouped by their
            # dimensions alone, not by a (hour, dimensions) pair made and hashed for each row.
            by_dims: dict[tuple, list] = {}
            for key, r in zip(map(dims_of, rows), rows, strict=True):
                group = by_dims.get(key)
                if group is None:
                    by_dims[key] = [r]
                else:
                    group.append(r)
            groups = {(hour, dims): group for dims, group in by_dims.items()}
        else:
            for key, r in zip(zip(map(floordiv, times, repeat(3600)), map(self._dims_of, rows), strict=True), rows,
                              strict=True):
                group = groups.get(key)
                if group is None:
                    groups[key] = [r]
                else:
                    group.append(r)
        for (hour, dims), group in groups.items():
            self._sum(hour, dims, list(zip(*group, strict=True)))

    def _one_group(self, cols: list[tuple], first: tuple) -> float | None:
        """The hour (as ``time // 3600``) when the rows whose columns these are all fall in one hour
        and all have the dimensions ``first`` (each dimension's column counted in C: ``==``,
        identity first, as the tuples of the rows' dimensions compare); else None."""
        ix = self._ix
        times = cols[ix[0]]
        hour = min(times) // 3600
        if max(times) // 3600 != hour or sum(times) != sum(times):  # (a NaN time: grouped row by row)
            return None
        n = len(times)
        for i, value in zip(ix[1:7], first, strict=True):
            if cols[i].count(value) != n:
                return None
        return hour

    def _sum(self, hour: float, dims_of_rows: tuple, cols: list[tuple]) -> None:
        """Add one group's rows, given as their columns (``zip(*rows)``), to its hour's rollup row."""
        (_t, _k, _a, _m, _p, _s, _e, i_hit, i_stream, i_pt, i_ct, i_cached, i_reason, i_cost, i_lat, i_ttfb,
         i_est) = self._ix
        key_id, account_id, model, provider, status, error_code = dims_of_rows
        dims = (int(hour) * 3600, key_id or "", account_id or "", model or "", provider or "", status,
                error_code or "")
        hours = self.hours
        acc = hours.get(dims)
        if acc is None:
            acc = hours[dims] = [0] * len(MEASURES)
        lats = cols[i_lat]
        n = len(lats)
        try:
            lat_sum = sum(lats, acc[9])
        except TypeError:  # a latency of None, counted as 0.0 (cheaper than looking for None first)
            lats = [lat or 0.0 for lat in lats]
            lat_sum = sum(lats, acc[9])
        acc[0] += n
        if status >= 400:
            acc[1] += n
        acc[2] = sum(cols[i_hit], acc[2])
        acc[3] = sum(cols[i_stream], acc[3])
        acc[4] = sum(cols[i_pt], acc[4])
        acc[5] = sum(cols[i_ct], acc[5])
        acc[6] = sum(cols[i_cached], acc[6])
        acc[7] = sum(cols[i_reason], acc[7])
        acc[8] = sum(cols[i_cost], acc[8])
        acc[9] = lat_sum
        acc[12] = sum(cols[i_est], acc[12])
        low, high = _count_buckets(acc, _FIRST_LAT, lats)
        span = self.span
        if low < span[0]:
            span[0] = low
        if high >= span[1]:
            span[1] = high + 1
        ttfbs = cols[i_ttfb]
        try:
            ttfb_sum = sum(ttfbs, acc[11])
        except TypeError:  # rows without a first byte (None): not counted
            ttfbs = [t for t in ttfbs if t is not None]
            ttfb_sum = sum(ttfbs, acc[11])
        if ttfbs:
            acc[10] += len(ttfbs)
            acc[11] = ttfb_sum
            low, high = _count_buckets(acc, _FIRST_TTFB, ttfbs)
            if low < span[2]:
                span[2] = low
            if high >= span[3]:
                span[3] = high + 1

    def rows(self, before: int | None = None) -> tuple[list[tuple], list[tuple]]:
        """(hour rows, day rows) for every hour before ``before`` (all when None),
        removed from the aggregator."""
        done = [d for d in self.hours if before is None or d[0] < before]
        hour_rows = []
        days: dict[tuple, list] = {}
        for dims in done:
            acc = self.hours.pop(dims)
            hour_rows.append(dims + tuple(acc))
            day_dims = (dims[0] // 86400 * 86400,) + dims[1:]
            day = days.get(day_dims)
            if day is None:
                days[day_dims] = acc
            else:
                for i, v in enumerate(acc):
                    day[i] += v
        return hour_rows, [d + tuple(acc) for d, acc in days.items()]


def _view_key(keep: tuple[str, ...]) -> itemgetter:
    """Picks a view's dimensions from a row's dimensions followed by ``_BLANKS``: the kept
    ones, and blanks (``0`` for the status, ``""`` for the others) for the rest."""
    blank, zero = len(DIMENSIONS), len(DIMENSIONS) + 1
    return itemgetter(*(i if name == "bucket" or name in keep else zero if name == "status" else blank
                        for i, name in enumerate(DIMENSIONS)))


_BLANKS = ("", 0)
_VIEW_KEYS = {view: _view_key(keep) for view, keep in VIEWS.items() if view}


def project(rows: Iterable[tuple], view: str) -> list[tuple]:
    """Full-detail rollup rows summed down to a view's dimensions. (A row's measures may be
    any of them, the same in every row: they are summed as they come.)"""
    if not view:
        return list(rows)
    key_of = _VIEW_KEYS[view]
    n = len(DIMENSIONS)
    out: dict[tuple, list] = {}
    for r in rows:
        key = key_of(r[:n] + _BLANKS)
        acc = out.get(key)
        out[key] = list(r[n:]) if acc is None else list(map(add, acc, r[n:]))
    return [d + tuple(acc) for d, acc in out.items()]


async def rebuild(store, columns: Sequence[str], chunk: int = 20000) -> int:
    """Recompute both tables from the whole ledger, in one transaction; the
    number of ledger rows read. On PostgreSQL the rollup tables are locked for
    the duration: a writer's flush waits and then adds only its own rows on top."""
    async with store.transaction() as tx:
        return await rebuild_in(tx, columns, chunk)


async def rebuild_in(tx, columns: Sequence[str], chunk: int = 20000) -> int:
    """``rebuild`` inside the caller's transaction. Reads the ledger in time
    order by its (time, id) index, so memory stays bounded by one day's rows."""
    cols = ", ".join(columns)
    total = 0
    if tx.kind == "postgres":
        await tx.execute(f"lock table {', '.join(name for name, _ in TABLES)} in exclusive mode")
    for name, _ in TABLES:
        await tx.execute(f"delete from {name}")
    agg = Aggregator(columns)
    i_time, i_id = columns.index("time"), columns.index("id")
    after: tuple | None = None
    days_open: dict[tuple, list] = {}
    while True:
        if after is None:
            batch = await tx.fetchall(f"select {cols} from tollway_ledger order by time, id limit {chunk}")
        else:
            batch = await tx.fetchall(f"select {cols} from tollway_ledger where time > ? or (time = ? and id > ?) "
                                      f"order by time, id limit {chunk}", (after[0], after[0], after[1]))
        if not batch:
            break
        total += len(batch)
        agg.add(batch)
        last = batch[-1]
        after = (last[i_time], last[i_id])
        # Hours before the last row's hour are complete (rows come in time order).
        hour_rows, day_rows = agg.rows(before=int(after[0] // 3600) * 3600)
        await tx.insert_rows(HOUR, COLUMNS, hour_rows)
        _merge_days(days_open, day_rows)
        done_before = int(after[0] // 86400) * 86400
        finished = [d for d in days_open if d[0] < done_before]
        await tx.insert_rows(DAY, COLUMNS, [d + tuple(days_open.pop(d)) for d in finished])
        if len(batch) < chunk:
            break
    hour_rows, day_rows = agg.rows()
    await tx.insert_rows(HOUR, COLUMNS, hour_rows)
    _merge_days(days_open, day_rows)
    await tx.insert_rows(DAY, COLUMNS, [d + tuple(acc) for d, acc in days_open.items()])
    for base, _ in GRAINS:
        for view, keep in VIEWS.items():
            if view:
                await tx.execute(_derive_sql(base, view, keep))
    if total:
        log.info("rollups: built from %d ledger rows", total)
    return total


def _derive_sql(base: str, view: str, keep: tuple[str, ...]) -> str:
    """Fill a view's table from the full-detail one, in SQL."""
    dims = ", ".join(c if c == "bucket" or c in keep else ("0" if c == "status" else "''") for c in DIMENSIONS)
    group = ", ".join(c for c in DIMENSIONS if c == "bucket" or c in keep)
    sums = ", ".join(f"sum({c})" for c in MEASURES)
    return (f"insert into {base}{view} ({', '.join(COLUMNS)}) select {dims}, {sums} from {base} "
            f"group by {group}")


def _merge_days(days: dict[tuple, list], rows: list[tuple]) -> None:
    n = len(DIMENSIONS)
    for r in rows:
        acc = days.get(r[:n])
        if acc is None:
            days[r[:n]] = list(r[n:])
        else:
            for i, v in enumerate(r[n:]):
                acc[i] += v


# -- reading ------------------------------------------------------------------------------

def percentile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) of a histogram, in ms; None when it is empty.
    Inside a bucket the value is interpolated geometrically (linearly in bucket 0)."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if not n:
            continue
        if seen + n >= rank:
            frac = (rank - seen) / n
            if i == 0:
                return BOUNDS[0] * frac
            low = BOUNDS[i - 1]
            if i >= len(BOUNDS):
                return low
            return low * math.pow(BOUNDS[i] / low, frac)
        seen += n
    return BOUNDS[-1]


def hist_sums(prefix: str) -> str:
    """``sum(lat_0), sum(lat_1), ...`` for a select list."""
    names = LAT if prefix == "lat" else TTFB
    return ", ".join(f"sum({c})" for c in names)
