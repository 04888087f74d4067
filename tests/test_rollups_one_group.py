"""The aggregator's one-group path (a slice whose rows all have the same dimensions: one key's
traffic, taken whole, told in C) counts what adding one row at a time counted: slices of one
key's rows (its texts equal, not always the same objects), slices whose first and last rows
agree and one row between does not (a None key, another status, "" for None), and slices of
keys taking turns, fed to one aggregator as a flush's slices are."""

from __future__ import annotations

import random

import pytest
from test_rollups import _rows_one_by_one

from plugins.accounts import db, rollups


def _row(rng: random.Random, i: int, dims: tuple, start: float) -> tuple:
    key_id, account_id, model, provider, status, error_code = dims
    row = dict.fromkeys(db.LEDGER_COLUMNS, 0)
    row.update(id=f"r{i}", time=start + rng.random() * 0.2, key_id=key_id, account_id=account_id, model=model,
               provider=provider, status=status, error_code=error_code, cache_hit=rng.randint(0, 1),
               stream=rng.randint(0, 1), prompt_tokens=rng.randint(0, 5000), completion_tokens=rng.randint(0, 900),
               cached_tokens=rng.randint(0, 100), reasoning_tokens=rng.randint(0, 50),
               cost_micro_usd=rng.randint(0, 10**9),
               latency_ms=rng.choice([None, 0.0, rng.random() * 5000, rng.lognormvariate(3, 2)]),
               ttfb_ms=rng.choice([None, 0.0, rng.random() * 900]), estimated=rng.randint(0, 1))
    return tuple(row[c] for c in db.LEDGER_COLUMNS)


def test_one_group_slices_count_as_adding_row_by_row():
    rng = random.Random(20261206)
    start = 1_700_001_800.0  # (mid-hour: every slice in one hour)
    one = ("key_1", "acc_1", "bench", "mock", 200, None)
    others = [("key_2", "acc_2", "bench", "mock", 200, None), (None, "acc_1", "bench", "mock", 200, None),
              ("key_1", "acc_1", "bench", "mock", 429, "rate_limited"), ("", "acc_1", "bench", "mock", 200, None),
              ("key_1", "acc_1", "bench", "mock", 200, "")]
    batches, i = [], 0
    for b in range(400):
        n = rng.choice([1, 2, 7, 128])
        kind = b % 4
        rows = []
        for j in range(n):
            if kind == 0:  # one key; its texts built again now and then (equal, not the same object)
                dims = tuple("".join(list(v)) if isinstance(v, str) and rng.random() < 0.3 else v for v in one)
            elif kind == 1:  # first and last agree, one row between does not
                dims = rng.choice(others) if 0 < j == n // 2 < n - 1 else one
            elif kind == 2:  # keys taking turns
                dims = (one, *others)[j % 3]
            else:  # anything
                dims = rng.choice((one, *others))
            rows.append(_row(rng, i, dims, start))
            i += 1
        batches.append(rows)
    agg = rollups.Aggregator(db.LEDGER_COLUMNS)
    for batch in batches:
        agg.add(batch)
    hours, days = agg.rows()
    expected, _ = _rows_one_by_one(db.LEDGER_COLUMNS, batches)
    n = len(rollups.DIMENSIONS)
    floats = (n + rollups.SUMS.index("latency_ms_sum"), n + rollups.SUMS.index("ttfb_ms_sum"))
    got = sorted(hours)
    assert len(got) == len(expected) == 4  # ("" and None are one rollup row: key "", error code "")
    for g, e in zip(got, expected, strict=True):
        assert [v for k, v in enumerate(g) if k not in floats] == [v for k, v in enumerate(e) if k not in floats]
        for k in floats:
            assert g[k] == pytest.approx(e[k], rel=1e-12, abs=1e-9)
    assert sum(r[n] for r in days) == i
