"""The upserts that count a flush's ledger rows into the rollups (``rollups.py``), in the
writer's transaction with the rows.

A rollup row has 97 measures, 84 of them histogram buckets (42 latency, 42 time to first
byte), and a flush's rows land in a few adjacent buckets of each: the rest of a rollup
row's buckets are zeros, which an upsert naming every column binds (an integer ~170
instructions on SQLite's thread) and adds (``lat_0 = lat_0 + excluded.lat_0``: reading,
adding and writing back a column that does not change). So the statement names only the
buckets up to the highest the flush counted in (``Aggregator.span``), rounded up to one
of a few fixed ends (``WINDOW_ENDS``), with the sums, for every rollup row
of the flush: one statement per table and flush, as before, narrower. A bucket left out
keeps what it held (an update sets only the columns it names; an insert gives the others
their default, 0). The stored rollups are the same as the full-width
upsert's (``tests/test_rollup_upserts.py``, on SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from .rollups import DIMENSIONS, GRAINS, LAT, NBUCKETS, SUMS, TTFB, VIEWS, Aggregator, project

#: Rows summed between two turns of the event loop when a flush counts its rows, while the
#: loop's turns come back quickly (``batch_steps``): ~0.05 ms of the loop's time each in a
#: served process, what a request arriving meanwhile waits at most.
SLICE_ROWS = 32

#: A turn given back that took longer than this (seconds) says the loop is busy: the rest of
#: the rows are summed in slices of up to ``BUSY_SLICE_ROWS``.
BUSY_TURN_S = 0.002
BUSY_SLICE_ROWS = 512

#: The buckets an upsert may name, of each histogram: the first 16, 24, 32 or all 42 (the
#: first that holds every bucket the flush counted in; 16: latencies under 256 ms). A fixed
#: few, so the statement texts are a fixed few (4 x 5 a table, 6 tables, 120 in all: SQLite's
#: statement cache keeps them, ``proxy/store/sqlite.py``): preparing one costs up to ~1M
#: instructions, and texts cut to each flush's span were prepared again and again.
WINDOW_ENDS = (16, 24, 32, NBUCKETS)

_SUMS_END = len(DIMENSIONS) + len(SUMS)  # a rollup row: its dimensions, its sums, then the buckets
_LAT_START = _SUMS_END
_TTFB_START = _LAT_START + len(LAT)


async def batch_steps(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[tuple[str, list[tuple], bool]]:
    """The upserts that count ledger rows into the rollups, as ``Store.run_steps`` steps.
    Summed ``SLICE_ROWS`` rows at a time, letting the event loop run in between: a
    flush's rows at once (a few hundred at 1,000+ requests/s, a microsecond or more
    each) held up whatever request arrived meanwhile (the p99 at concurrency 1). Once a
    turn given back takes longer than ``BUSY_TURN_S`` (a busy loop: under a saturated
    core each turn waits for every connection's work, ~10 ms at 64 connections), the
    rest is summed in slices of up to ``BUSY_SLICE_ROWS``: a flush's turns are then its
    rows' wait for the store (the kill -9 promise, ``writer.py``)."""
    if not rows:
        return []
    agg = Aggregator(columns)
    clock = asyncio.get_running_loop().time
    start, step = 0, SLICE_ROWS
    agg.add(rows[:step])
    while (start := start + step) < len(rows):
        turn = clock()
        await asyncio.sleep(0)
        if clock() - turn > BUSY_TURN_S:
            step = BUSY_SLICE_ROWS
        agg.add(rows[start:start + step])
    (lat_low, lat_end), (ttfb_low, ttfb_end) = window(*agg.span[:2]), window(*agg.span[2:])
    lat = slice(_LAT_START + lat_low, _LAT_START + lat_end)
    ttfb = slice(_TTFB_START + ttfb_low, _TTFB_START + ttfb_end)
    texts = iter(_texts(lat_low, lat_end, ttfb_low, ttfb_end))
    steps = []
    for grain_rows in agg.rows():  # (hours, days: GRAINS' order)
        narrow = [r[:_SUMS_END] + r[lat] + r[ttfb] for r in grain_rows]  # (project sums what it is given)
        steps += [(next(texts), project(narrow, view), True) for view in VIEWS]
    return steps


def window(low: int, end: int) -> tuple[int, int]:
    """The buckets ``[0, window end)`` named for buckets ``[low, end)`` counted in; ``(0, 0)``
    when none was."""
    if end <= low:
        return 0, 0
    for window_end in WINDOW_ENDS:
        if end <= window_end:
            return 0, window_end
    return 0, NBUCKETS


@lru_cache(maxsize=64)
def _texts(lat_low: int, lat_end: int, ttfb_low: int, ttfb_end: int) -> tuple[str, ...]:
    """Every table's upsert for these buckets, in ``batch_steps``' order (GRAINS, then VIEWS)."""
    return tuple(upsert_sql(base + view, lat_low, lat_end, ttfb_low, ttfb_end) for base, _ in GRAINS for view in VIEWS)


@lru_cache(maxsize=1024)
def upsert_sql(table: str, lat_low: int, lat_end: int, ttfb_low: int, ttfb_end: int) -> str:
    """The upsert of ``table``'s rows naming the sums and the buckets ``lat_<lat_low>`` ..
    ``lat_<lat_end - 1>`` and ``ttfb_<ttfb_low>`` .. ``ttfb_<ttfb_end - 1>``, in that order."""
    measures = SUMS + LAT[lat_low:lat_end] + TTFB[ttfb_low:ttfb_end]
    columns = DIMENSIONS + measures
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in measures)
    return (f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' for _ in columns)}) "
            f"on conflict ({', '.join(DIMENSIONS)}) do update set {updates}")
