"""The writer's rollup upserts name only the histogram buckets a flush counted in
(``plugins/accounts/rollup_upserts.py``), and the rollups they store are exactly those a
rebuild from the ledger makes, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import re

import aiohttp
import pytest
from business import biz_config, chat
from stores import ENGINES, fresh_database

from plugins.accounts import ACCOUNTS, db, rollup_upserts, rollups
from proxy.store import open_store

KEY = "sk-test-upserts-0001"


async def snapshot(store) -> dict:
    out = {}
    for table, _ in rollups.TABLES:
        rows = await store.fetchall(f"select {', '.join(rollups.COLUMNS)} from {table}")
        out[table] = sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows)
    return out


async def test_the_servers_upserts_name_the_counted_buckets_and_match_a_rebuild(start_gateway, tmp_path):
    config = biz_config(keys=[{"name": "k", "key": KEY, "credits": 5.0}], ledger={"flush_ms": 600000})
    config["storage"] = {"url": f"sqlite:///{tmp_path}/store.db"}
    running = await start_gateway(config)
    writer = running.gw.services[ACCOUNTS].writer
    statements: list[str] = []
    await running.gw.store.db.set_trace_callback(statements.append)
    async with aiohttp.ClientSession() as s:
        for stream in (False, True, False):
            status, _, _ = await chat(s, running, KEY, stream=stream)
            assert status == 200
    await writer.flush()
    upserts = [sql for sql in statements if sql.startswith(f"insert into {rollups.HOUR} ")]
    assert len(upserts) == 1
    named = re.findall(r"\b(lat|ttfb)_(\d+)\b", upserts[0].split(" values ")[0])
    store = running.gw.store
    lat = await store.fetchone(f"select {', '.join(rollups.LAT)} from {rollups.HOUR}")
    ttfb = await store.fetchone(f"select {', '.join(rollups.TTFB)} from {rollups.HOUR}")
    # The buckets up to the first end past those counted in: not the 42 of each histogram.
    assert sum(lat) == 3
    for kind, counts in (("lat", lat), ("ttfb", ttfb)):
        highest = max(i for i, n in enumerate(counts) if n)
        end = next(e for e in rollup_upserts.WINDOW_ENDS if highest < e)
        assert sorted(int(i) for k, i in named if k == kind) == list(range(end)), kind
    before = await snapshot(store)
    assert await rollups.rebuild(store, db.LEDGER_COLUMNS) == 3
    assert await snapshot(store) == before
    await running.server.close()


def ledger_rows(flush: int, rng: random.Random, first_byte: bool) -> list[tuple]:
    """A flush's rows: two keys, latencies spread over one, a few or many buckets."""
    spread = rng.choice([0.001, 3.0, 5000.0, 2.0**21])
    low = rng.choice([0.0, 0.5, 40.0])
    rows = []
    for i in range(rng.choice([1, 3, 40])):
        row = dict.fromkeys(db.LEDGER_COLUMNS, 0)
        row.update(id=f"f{flush}-{i}", time=1_700_000_000 + flush * 1800 + i, day="2023-11-14",
                   key_id=f"key_{i % 2}", account_id="acc", endpoint="chat", model="m", served_model="m",
                   provider="p", status=rng.choice([200, 200, 429]), error_code=None, prompt_tokens=i,
                   completion_tokens=2 * i, cost_micro_usd=7 * i, latency_ms=low + rng.random() * spread,
                   ttfb_ms=(low + rng.random() * spread) if first_byte and i % 3 else None, deployments=None)
        rows.append(tuple(row[c] for c in db.LEDGER_COLUMNS))
    return rows


@pytest.mark.parametrize("engine", ENGINES)
async def test_narrow_upserts_store_what_a_rebuild_makes(tmp_path, engine):
    rng = random.Random(11)
    async with fresh_database(engine, tmp_path) as url:
        store = open_store(url, tmp_path)
        await store.connect()
        try:
            await db.create_tables(store)
            total = 0
            for flush in range(24):  # spans wide and narrow, with and without a first byte, hours that repeat
                rows = ledger_rows(flush % 9, rng, first_byte=flush % 4 != 1)
                rows = [(f"{r[0]}-{flush}", *r[1:]) for r in rows]
                total += len(rows)
                await db.store_batch(store, rows, {}, "writer:test", flush + 1)
            stored = await snapshot(store)
            assert sum(r[len(rollups.DIMENSIONS)] for r in stored[rollups.HOUR]) == total
            assert await rollups.rebuild(store, db.LEDGER_COLUMNS) == total
            assert await snapshot(store) == stored
        finally:
            await store.close()


def test_an_upserts_columns_are_the_sums_and_the_span():
    sql = rollup_upserts.upsert_sql(rollups.DAY, 0, 24, 0, 16)
    columns = sql.split("(", 1)[1].split(")", 1)[0].split(", ")
    assert tuple(columns) == (rollups.DIMENSIONS + rollups.SUMS + tuple(f"lat_{i}" for i in range(24))
                              + tuple(f"ttfb_{i}" for i in range(16)))
    assert sql.count("?") == len(columns)


def test_the_statement_texts_are_a_fixed_few():
    """Whatever the latencies, a flush's upserts use one of 4 x 5 texts a table."""
    windows = {rollup_upserts.window(low, end) for low in range(rollups.NBUCKETS)
               for end in range(low + 1, rollups.NBUCKETS + 1)}
    assert windows == {(0, 16), (0, 24), (0, 32), (0, rollups.NBUCKETS)}
    assert rollup_upserts.window(5, 5) == (0, 0)
    assert rollup_upserts.window(3, 16) == (0, 16) and rollup_upserts.window(3, 17) == (0, 24)


def test_project_sums_rows_down_to_each_view():
    """The views' rows (``rollups.project``), against a sum written out plainly: random rows of
    three keys, two models, two statuses; measures as wide as a narrowed upsert's or all of them."""
    rng = random.Random(5)
    n = len(rollups.DIMENSIONS)
    for width in (len(rollups.SUMS) + 16, len(rollups.MEASURES)):
        rows = [(3600 * rng.randint(0, 1), f"key_{rng.randint(0, 2)}", "acc", rng.choice(["m1", "m2"]), "p",
                 rng.choice([200, 429]), rng.choice(["", "rate_limited"]), *(rng.randint(0, 9) for _ in range(width)))
                for _ in range(60)]
        assert rollups.project(rows, "") == rows  # (full detail: the aggregator's rows, one per dimensions)
        for view, keep in ((v, k) for v, k in rollups.VIEWS.items() if v):
            expected: dict[tuple, list] = {}
            for r in rows:
                key = tuple(v if name == "bucket" or name in keep else (0 if name == "status" else "")
                            for name, v in zip(rollups.DIMENSIONS, r[:n], strict=True))
                acc = expected.setdefault(key, [0] * width)
                for i, v in enumerate(r[n:]):
                    acc[i] += v
            assert sorted(rollups.project(rows, view)) == sorted(k + tuple(v) for k, v in expected.items()), view
