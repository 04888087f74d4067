"""A flush counts its rows into the rollups in slices, giving the event loop a turn between
two (``plugins/accounts/rollup_upserts.batch_steps``): ``SLICE_ROWS`` rows a slice while the
turns come back quickly (the request that arrives meanwhile waits for one small slice, not a
flush), and the rest in slices of up to ``BUSY_SLICE_ROWS`` once a turn was slow (a busy
loop makes each turn wait for every connection, and the flush's rows wait for the store).
Whatever the slicing, the upserts are the ones summing every row at once makes."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from test_rollup_upserts import ledger_rows

from plugins.accounts import db, rollup_upserts, rollups


def flush_rows(n: int) -> list[tuple]:
    rng = random.Random(n)
    rows: list[tuple] = []
    flush = 0
    while len(rows) < n:
        rows += [(f"{r[0]}-{flush}", *r[1:]) for r in ledger_rows(flush, rng, first_byte=flush % 2 == 0)]
        flush += 1
    return rows[:n]


@pytest.fixture
def slices(monkeypatch) -> list[int]:
    """The row counts the aggregator is given, one per slice."""
    seen: list[int] = []

    class Counting(rollup_upserts.Aggregator):
        def add(self, rows):  # type: ignore[no-untyped-def]
            seen.append(len(rows))
            return super().add(rows)

    monkeypatch.setattr(rollup_upserts, "Aggregator", Counting)
    return seen


async def other_work(hold_s: float, stop: asyncio.Event) -> int:
    """A task that runs beside the flush, holding the loop ``hold_s`` a turn; its turns."""
    turns = 0
    while not stop.is_set():
        time.sleep(hold_s)
        turns += 1
        await asyncio.sleep(0)
    return turns


async def sliced(rows: list[tuple], hold_s: float) -> tuple[list, int]:
    stop = asyncio.Event()
    beside = asyncio.ensure_future(other_work(hold_s, stop))
    await asyncio.sleep(0)
    try:
        steps = await rollup_upserts.batch_steps(db.LEDGER_COLUMNS, rows)
    finally:
        stop.set()
        turns = await beside
    return steps, turns


async def test_a_quiet_loop_gets_a_turn_every_slice(slices, monkeypatch):
    monkeypatch.setattr(rollup_upserts, "BUSY_TURN_S", 60.0)  # (a loaded test machine's turn is never "busy")
    rows = flush_rows(200)
    steps, turns = await sliced(rows, 0.0)
    assert slices == [32] * 6 + [8]
    assert turns >= 6  # the task beside the flush ran between every two slices


async def test_a_busy_loop_gets_the_rest_in_large_slices(slices):
    rows = flush_rows(1200)
    await sliced(rows, rollup_upserts.BUSY_TURN_S * 1.5)
    assert slices == [32, 512, 512, 144]


@pytest.mark.parametrize("hold_s", [0.0, 0.003])
@pytest.mark.parametrize("n", [1, 31, 32, 33, 200, 700])
async def test_slicing_changes_no_upsert(monkeypatch, n, hold_s):
    rows = flush_rows(n)
    steps, _ = await sliced(rows, hold_s)
    monkeypatch.setattr(rollup_upserts, "SLICE_ROWS", 10**6)
    whole, _ = await sliced(rows, 0.0)
    assert steps == whole
    counted = sum(r[len(rollups.DIMENSIONS)] for r in steps[0][1])
    assert counted == n
