"""The hourly and daily rollups agree with the ledger they count, on SQLite and PostgreSQL;
a rebuild from the ledger gives the same tables; the latency histogram answers percentiles."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
import yaml
from business import bearer, biz_config, chat
from stores import ENGINES, fresh_database

from plugins.accounts import ACCOUNTS, db, rollups
from proxy.cli import main

NARROW = "sk-test-narrow-0001"


def traffic_config(url: str) -> dict:
    config = biz_config(keys=[{"name": "demo", "key": "sk-test-demo-key-0001", "credits": 5.0},
                              {"name": "narrow", "key": NARROW, "credits": 5.0, "models": ["echo"],
                               "limits": {"rpm": 3}}], ledger={"flush_ms": 20})
    config["models"]["other"] = {"provider": "local", "price": {"input": 3.0, "output": 1.0}}
    config["storage"] = {"url": url}
    return config


async def make_traffic(running) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(6):
            await chat(s, running, "sk-test-demo-key-0001", content="hello " * (i + 1))
        await chat(s, running, "sk-test-demo-key-0001", model="other", stream=True)
        await chat(s, running, "sk-test-demo-key-0001", model="nope")  # 404
        for _ in range(5):
            await chat(s, running, NARROW)  # 3 pass, then 429
        await chat(s, running, NARROW, model="other")  # 403
        async with s.post(running.url + "/chat/completions", headers=bearer(NARROW), json={"model": "echo"}) as r:
            assert r.status == 400  # no messages
    await running.gw.services[ACCOUNTS].writer.flush()


LEDGER_SUMS = ("count(*), sum(case when status >= 400 then 1 else 0 end), sum(cache_hit), sum(stream), "
               "sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(reasoning_tokens), "
               "sum(cost_micro_usd), count(ttfb_ms)")
ROLLUP_SUMS = ("sum(requests), sum(errors), sum(cache_hits), sum(streams), sum(prompt_tokens), "
               "sum(completion_tokens), sum(cached_tokens), sum(reasoning_tokens), sum(cost_micro_usd), "
               "sum(ttfb_count)")


GROUPED = ("key_id", "model", "provider", "status", "error_code")


def keep_of(table: str) -> tuple[str, ...]:
    view = next(v for v in sorted(rollups.VIEWS, key=len, reverse=True) if table.endswith(v))
    return tuple(d for d in GROUPED if d in rollups.VIEWS[view])


async def ledger_groups(store, seconds: int, keep: tuple[str, ...]) -> dict:
    rows = await store.fetchall(
        "select time, coalesce(key_id, ''), model, coalesce(provider, ''), status, coalesce(error_code, '') "
        "from tollway_ledger")
    groups: dict = {}
    for t, *dims in rows:
        key = (int(t // seconds) * seconds, *(v for name, v in zip(GROUPED, dims, strict=True) if name in keep))
        groups[key] = groups.get(key, 0) + 1
    return groups


async def rollup_groups(store, table: str, keep: tuple[str, ...]) -> dict:
    rows = await store.fetchall(f"select bucket, {', '.join(keep)}, requests from {table}")
    return {tuple(r[:-1]): int(r[-1]) for r in rows}


async def snapshot(store) -> dict:
    out = {}
    for table, _ in rollups.TABLES:
        rows = await store.fetchall(f"select {', '.join(rollups.COLUMNS)} from {table}")
        out[table] = sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows)
    return out


async def check_store(running) -> None:
    store = running.gw.store
    ledger_total = await store.fetchone(f"select {LEDGER_SUMS} from tollway_ledger")
    assert ledger_total[0] >= 14 and ledger_total[1] >= 5  # the traffic reached the ledger, errors too
    for table, seconds in rollups.TABLES:
        total = await store.fetchone(f"select {ROLLUP_SUMS} from {table}")
        assert tuple(int(v or 0) for v in total) == tuple(int(v or 0) for v in ledger_total), table
        keep = keep_of(table)
        assert await rollup_groups(store, table, keep) == await ledger_groups(store, seconds, keep), table
        hist = await store.fetchone(f"select {rollups.hist_sums('lat')} from {table}")
        assert sum(hist) == ledger_total[0]
    before = await snapshot(store)
    assert await rollups.rebuild(store, db.LEDGER_COLUMNS, chunk=4) == ledger_total[0]
    assert await snapshot(store) == before


@pytest.mark.parametrize("engine", ENGINES)
async def test_rollups_match_the_ledger(start_gateway, tmp_path, engine):
    async with fresh_database(engine, tmp_path) as url:
        running = await start_gateway(traffic_config(url))
        await make_traffic(running)
        await check_store(running)
        await running.server.close()


def test_aggregator_spreads_rows_over_hours_and_days():
    cols = db.LEDGER_COLUMNS
    rng = random.Random(7)
    rows = []
    for i in range(500):
        t = 1_700_000_000 + rng.random() * 3 * 86400
        row = dict.fromkeys(cols, 0)
        row.update(id=f"r{i}", time=t, key_id=rng.choice(["a", "b", None]), account_id="acc", model="m",
                   provider="p", status=rng.choice([200, 200, 429]), error_code=None, latency_ms=rng.random() * 900,
                   ttfb_ms=None if i % 2 else 5.0, cost_micro_usd=i)
        rows.append(tuple(row[c] for c in cols))
    agg = rollups.Aggregator(cols)
    agg.add(rows)
    hours, days = agg.rows()
    n = len(rollups.DIMENSIONS)
    for out in (hours, days):
        assert sum(r[n] for r in out) == 500
        assert sum(r[n + rollups.SUMS.index("cost_micro_usd")] for r in out) == sum(range(500))
        assert sum(r[n + rollups.SUMS.index("ttfb_count")] for r in out) == 250
    assert len({r[0] for r in days}) in (3, 4) and all(r[0] % 86400 == 0 for r in days)
    assert not agg.hours


@pytest.mark.parametrize("dist", ["uniform", "lognormal"])
def test_percentiles_from_the_histogram_are_close(dist):
    rng = random.Random(3)
    values = [rng.uniform(5, 2000) if dist == "uniform" else rng.lognormvariate(4, 1) for _ in range(20000)]
    counts = [0] * rollups.NBUCKETS
    for v in values:
        counts[rollups.bucket_of(v)] += 1
    values.sort()
    for q in (0.5, 0.95, 0.99):
        true = values[int(q * len(values)) - 1]
        assert abs(rollups.percentile(counts, q) - true) / true < 0.2
    assert rollups.percentile([0] * rollups.NBUCKETS, 0.5) is None


async def test_rollups_rebuild_command(start_gateway, tmp_path, capsys):
    config = traffic_config(f"sqlite:///{tmp_path}/tollway.db")
    running = await start_gateway(config)
    await make_traffic(running)
    expected = await snapshot(running.gw.store)
    await running.gw.store.execute(f"delete from {rollups.DAY}")
    await running.server.close()
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    assert await asyncio.to_thread(main, ["rollups", "rebuild", "--config", str(path)]) == 0
    assert "rebuilt the rollups from" in capsys.readouterr().out
    again = await start_gateway(config)
    assert await snapshot(again.gw.store) == expected


def _rows_one_by_one(cols, batches) -> tuple[list, list]:
    """The rollups as the aggregator counted them before it summed columns in C: one row at a time."""
    ix = {c: i for i, c in enumerate(cols)}
    hours: dict[tuple, list] = {}
    for rows in batches:
        for r in rows:
            status = r[ix["status"]]
            dims = (int(r[ix["time"]] // 3600) * 3600, r[ix["key_id"]] or "", r[ix["account_id"]] or "",
                    r[ix["model"]] or "", r[ix["provider"]] or "", status, r[ix["error_code"]] or "")
            acc = hours.setdefault(dims, [0] * len(rollups.MEASURES))
            lat = r[ix["latency_ms"]] or 0.0
            acc[0] += 1
            acc[1] += status >= 400
            for i, name in ((2, "cache_hit"), (3, "stream"), (4, "prompt_tokens"), (5, "completion_tokens"),
                            (6, "cached_tokens"), (7, "reasoning_tokens"), (8, "cost_micro_usd"), (12, "estimated")):
                acc[i] += r[ix[name]]
            acc[9] += lat
            acc[len(rollups.SUMS) + rollups.bucket_of(lat)] += 1
            ttfb = r[ix["ttfb_ms"]]
            if ttfb is not None:
                acc[10] += 1
                acc[11] += ttfb
                acc[len(rollups.SUMS) + rollups.NBUCKETS + rollups.bucket_of(ttfb)] += 1
    return sorted(d + tuple(a) for d, a in hours.items()), []


@pytest.mark.parametrize("span_s", [2 * 86400, 3600, 0.2])
def test_aggregator_counts_as_adding_row_by_row(span_s):
    """The aggregator sums each (hour, dimensions) group's columns at once; on 20,000 generated
    rows, fed in slices as a flush does, it gives what adding one row at a time gave. Rows over
    two days, over an hour (slices that cross it and slices that do not), and over a fifth of a
    second (a flush's: every slice in one hour, grouped by its dimensions alone)."""
    cols = db.LEDGER_COLUMNS
    rng = random.Random(11)
    rows = []
    start = 1_700_000_000 if span_s > 1 else 1_700_001_800  # (the fifth of a second: mid-hour)
    for i in range(20_000):
        row = dict.fromkeys(cols, 0)
        status = rng.choice([200, 200, 200, 400, 402, 429, 502])
        row.update(id=f"r{i}", time=start + rng.random() * span_s + rng.choice([0, 0.5]) * (span_s > 1),
                   key_id=rng.choice(["a", "b", "", None]), account_id=rng.choice(["acc", None]),
                   model=rng.choice(["m", "n"]), provider=rng.choice(["p", None]), status=status,
                   error_code=None if status == 200 else rng.choice(["rate_limited", None]),
                   cache_hit=rng.randint(0, 1), stream=rng.randint(0, 1), prompt_tokens=rng.randint(0, 5000),
                   completion_tokens=rng.randint(0, 900), cached_tokens=rng.randint(0, 100),
                   reasoning_tokens=rng.randint(0, 50), cost_micro_usd=rng.randint(0, 10**9),
                   latency_ms=rng.choice([None, 0, 0.0, rng.random() * 5000, rng.lognormvariate(3, 2), 2 ** 21]),
                   ttfb_ms=rng.choice([None, 0.0, rng.random() * 900, 1.0, 2 ** 0.5]), estimated=rng.randint(0, 1))
        rows.append(tuple(row[c] for c in cols))
    batches, i = [], 0
    while i < len(rows):
        step = rng.choice([1, 7, 128, 1000])
        batches.append(rows[i:i + step])
        i += step
    agg = rollups.Aggregator(cols)
    for batch in batches:
        agg.add(batch)
    hours, days = agg.rows()
    expected, _ = _rows_one_by_one(cols, batches)
    n = len(rollups.DIMENSIONS)
    floats = (n + rollups.SUMS.index("latency_ms_sum"), n + rollups.SUMS.index("ttfb_ms_sum"))
    got = sorted(hours)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert [v for i, v in enumerate(g) if i not in floats] == [v for i, v in enumerate(e) if i not in floats]
        for i in floats:  # summed in the same order: equal (Python 3.12+ sums floats compensated: close)
            assert g[i] == pytest.approx(e[i], rel=1e-12, abs=1e-9)
    assert sum(r[n] for r in days) == 20_000
