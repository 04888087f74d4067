"""Inserts with ``shared`` columns (bound once for a chunk of rows that agree on them, on
SQLite: ``proxy/store/sqlite_rows.py``) store exactly the rows given, on both engines, whether
a chunk's rows agree or not; and through the real server the ledger holds every request's row,
for one key's traffic (its chunks agree) and two keys' interleaved (they do not)."""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp
import openai
import pytest
from business import DEMO, biz_config, credits
from stores import ENGINES, fresh_database

from plugins.accounts import ACCOUNTS, db
from proxy.store import open_store
from proxy.store import sqlite as sqlite_store
from proxy.store.sqlite_rows import InsertTexts, SharedFlat

COLUMNS = ("id", "t", "day", "who", "n", "flag", "note", "x")
SHARED = ("day", "who", "flag", "note")
TABLE = ("create table {t} (id text primary key, t double precision not null, day text not null, who text, "
         "n bigint not null, flag integer not null, note text, x double precision)")


def generated(count: int, rng: random.Random, prefix: str, odd: float) -> list[tuple]:
    """Rows that agree on the shared columns but for a share ``odd`` that do not (a None,
    another text, another integer), with values of every type elsewhere."""
    rows = []
    for i in range(count):
        day, who, flag, note = "2026-12-04", "key_1", 0, None
        roll = rng.random() / odd if odd else 1.0
        if roll < 0.3:
            who = None
        elif roll < 0.5:
            who = "key_2"
        elif roll < 0.7:
            flag = 1
        elif roll < 0.9:
            note = 'quotes " and ünïcödé'
        elif roll < 1.0:
            day = "2026-12-05"
        rows.append((f"{prefix}{i:05d}", 1764806400.0 + i / 7, day, who, rng.choice((0, -3, 2**62, 7 * i)), flag,
                     note, rng.choice((None, 0.1 + 0.2, float(i)))))
    return rows


class Recording:
    """A sqlite3 connection that keeps how many values each insert bound (SQLite's thread)."""

    def __init__(self, conn, seen: list[int]) -> None:
        self.conn, self.seen = conn, seen

    def execute(self, sql: str, params):
        self.seen.append(len(params))
        return self.conn.execute(sql, params)


@pytest.mark.parametrize("engine", ENGINES)
async def test_shared_columns_store_exactly_the_rows_given(engine, tmp_path: Path, monkeypatch):
    rng = random.Random(20261204)
    bound: list[int] = []
    run_insert = sqlite_store.run_insert
    monkeypatch.setattr(sqlite_store, "run_insert", lambda conn, sql, rows: run_insert(Recording(conn, bound), sql,
                                                                                       rows))
    async with fresh_database(engine, tmp_path) as url:
        store = open_store(url, tmp_path)
        await store.connect()
        try:
            await store.execute(TABLE.format(t="t_shared"))
            expected = []
            # chunk sizes 1 to 32 (32, and what is left), chunks that all agree and some that do not
            for batch, (count, odd) in enumerate([(n, odd) for n in (1, 2, 3, 31, 32, 33, 70, 200)
                                                  for odd in (0.0, 0.01, 0.3)]):
                rows = generated(count, rng, f"b{batch}-", odd)
                async with store.transaction() as tx:
                    await tx.run_steps(tx.insert_steps("t_shared", COLUMNS, rows, SHARED))
                expected += rows
            same = [(f"s{i:04d}", float(i), "2026-12-04", "key_1", i, 0, None, None) for i in range(64)]
            await store.insert_rows("t_shared", COLUMNS, same, SHARED)  # (every chunk agrees)
            two = [(f"w{i:04d}", float(i), "2026-12-04", f"key_{i % 2}", i, 0, "n" if i % 3 else None, None)
                   for i in range(64)]
            await store.insert_rows("t_shared", COLUMNS, two, SHARED)  # (two keys' rows: no chunk agrees)
            expected += same + two
            got = await store.fetchall(f"select {', '.join(COLUMNS)} from t_shared order by id")
            if engine == "sqlite":  # 32-row chunks bound both ways: the shared columns once, and every value
                assert {4 + 32 * 4, 32 * 8} <= set(bound)
            assert got == sorted(expected)
            by_id = {r[0]: r for r in expected}
            for row in got:
                assert [type(v) for v in row] == [type(v) for v in by_id[row[0]]]
        finally:
            await store.close()


def test_a_chunk_binds_shared_values_once_when_its_rows_agree():
    """The statement for a chunk names the shared columns' parameters ``?1``..``?k`` in every row."""
    rows = [(f"r{i}", float(i), "d", "k", i, 0, None, 1.0) for i in range(4)]
    sql, chunk, many = InsertTexts().chunk("t", COLUMNS, SHARED, rows)
    assert not many and type(chunk) is SharedFlat and list(chunk) == rows
    assert chunk.sql.count("?1,") == 4 and chunk.sql.count("?4,") == 4  # day .. note: once a chunk, in each row
    assert "?5" in chunk.sql and "?20" in chunk.sql and "?21" not in chunk.sql  # 4 + 4 rows x 4 others
    assert sql.count("?") == 4 * len(COLUMNS)  # the statement every value binds to (rows that differ)


async def test_the_ledger_keeps_every_row_whether_its_chunks_agree_or_not(start_gateway, close_at_end):
    """One key's requests (its rows agree: bound once a chunk), then two keys' interleaved (their
    rows differ) and errors among them: every request has its row, with the key, status and
    cost its answer told, and the rows' costs add up to what the accounts were charged."""
    keys = [{"name": "demo", "key": DEMO, "credits": 5.0}, {"name": "other", "key": "sk-other-0000000", "credits": 5.0}]
    # (one flush at the end: chunks of 32, 32, 16 and 1 rows, the first all one key's)
    running = await start_gateway(biz_config(keys=keys, ledger={"flush_ms": 600_000, "batch_rows": 100_000}))
    told = []
    clients = {key: close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=key, max_retries=0))
               for key in (DEMO, "sk-other-0000000")}
    for i in range(80):
        key = DEMO if i < 40 or i % 2 else "sk-other-0000000"
        raw = await clients[key].chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "a b c " * (i % 5)}])
        told.append((key, raw.headers["x-tollway-request-id"], raw.headers["x-tollway-cost"]))
    with pytest.raises(openai.NotFoundError):
        await clients[DEMO].chat.completions.create(model="nope", messages=[{"role": "user", "content": "a"}])
    accounts = running.gw.services.get(ACCOUNTS)
    await accounts.writer.flush()
    stored = {r[0]: r for r in await running.gw.store.fetchall(
        "select id, key_id, status, error_code, cost_micro_usd, day, model, provider from tollway_ledger")}
    assert len(stored) == 81
    for key, rid, cost in told:
        row = stored[rid]
        assert row[1] == ("cfg_demo" if key == DEMO else "cfg_other") and row[2] == 200 and row[3] is None
        assert row[4] == int(cost.replace(".", "")) and row[6:] == ("echo", "local")
    assert sorted((r[2], r[3]) for r in stored.values())[-1] == (404, "model_not_found")
    async with aiohttp.ClientSession() as s:
        spent = sum([(await credits(s, running, k))["spent_micro_usd"] for k in clients])
    assert sum(r[4] for r in stored.values()) == spent
    assert db.LEDGER_SHARED and set(db.LEDGER_SHARED) <= set(db.LEDGER_COLUMNS)
