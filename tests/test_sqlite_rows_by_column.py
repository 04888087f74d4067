"""A shared chunk's values, looked at column by column on SQLite's thread (``run_insert``), are
exactly those the row-by-row way bound: the shared statement with the first row's shared values
and each row's others when every row agrees with the first (``==``, identity first, as tuples
compare: a NaN agrees only with itself), else the plain statement with every value. Chunks
that agree, that differ in the middle only, in the last row only, by a None, a type, a NaN."""

from __future__ import annotations

import random

from proxy.store.sqlite_rows import InsertTexts, SharedFlat, run_insert

COLUMNS = ("id", "t", "day", "who", "n", "flag", "note", "x")
SHARED = ("day", "who", "flag", "note")
NAN = float("nan")


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list]] = []

    def execute(self, sql: str, params: list) -> None:
        self.calls.append((sql, params))


def row_by_row(sql: str, chunk: SharedFlat) -> tuple[str, list]:
    """What a shared chunk binds, compared row by row with the first: the shared values once,
    then each other column's values, row after row (the statement's numbering)."""
    first = chunk.shared_of(chunk[0])
    if all(chunk.shared_of(r) == first for r in chunk):
        others = [chunk.varying_of(r) for r in chunk]
        return chunk.sql, [*first, *(row[j] for j in range(len(others[0])) for row in others)]
    return sql, [v for r in chunk for v in r]


def stored_rows(sql: str, params: list) -> list[tuple]:
    """The rows a multi-row insert stores: each ``?N`` (or plain ``?``, counted on) of its
    values resolved to the value bound there."""
    rows, counter = [], 0
    for group in sql.split(" values ", 1)[1][1:-1].split("), ("):
        row = []
        for name in group.split(", "):
            if name == "?":
                counter += 1
                row.append(params[counter - 1])
            else:
                row.append(params[int(name[1:]) - 1])
        rows.append(tuple(row))
    return rows


def chunk_rows(rng: random.Random, n: int) -> list[tuple]:
    base = ["2026-12-06", "key_1", 0, None]
    odd_at = rng.choice([None, None, 0, n - 1, rng.randrange(n)])
    rows = []
    for i in range(n):
        shared = list(base)
        if i == odd_at:
            j = rng.randrange(4)
            shared[j] = rng.choice([None, "key_2", 1, 0.0, NAN, "2026-12-07", "key_1" + ""])
        elif rng.random() < 0.05:
            shared[3] = NAN  # a new NaN object: not the first's
        day, who, flag, note = shared
        rows.append((f"r{i}", i / 7, day, who, rng.choice([i, -i, 2**62]), flag, note, rng.choice([None, 0.5, NAN])))
    return rows


def test_by_column_binds_what_row_by_row_bound():
    rng = random.Random(20261206)
    texts = InsertTexts()
    shared_seen = plain_seen = 0
    for _ in range(3000):
        rows = chunk_rows(rng, rng.choice([2, 3, 7, 31, 32]))
        if rng.random() < 0.1:
            same = rows[0][3]
            rows = [r[:3] + (same,) + r[4:] for r in rows]
        sql, chunk, _many = texts.chunk("t", COLUMNS, SHARED, rows)
        assert type(chunk) is SharedFlat
        got = Recording()
        run_insert(got, sql, chunk)
        want_sql, want_params = row_by_row(sql, chunk)
        assert len(got.calls) == 1
        got_sql, got_params = got.calls[0]
        assert got_sql == want_sql
        # (identity, value by value: NaN included, and 0 vs 0.0 vs False kept apart)
        assert len(got_params) == len(want_params)
        assert all(a is b for a, b in zip(got_params, want_params, strict=True))
        # what the statement stores: every row as given (its shared values the first row's, equal)
        stored = stored_rows(got_sql, got_params)
        assert len(stored) == len(rows)
        for s, r in zip(stored, rows, strict=True):
            assert all(a is b or a == b for a, b in zip(s, r, strict=True))
            if got_sql == sql:
                assert all(a is b for a, b in zip(s, r, strict=True))
            else:
                assert all(a is b for a, b in zip(chunk.varying_of(s), chunk.varying_of(r), strict=True))
        shared_seen += got_sql == chunk.sql
        plain_seen += got_sql == sql
    assert shared_seen > 500 and plain_seen > 500
