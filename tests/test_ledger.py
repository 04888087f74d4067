"""The ledger: one row per request, flushed at shutdown; a restart keeps everything exactly."""

from __future__ import annotations

import sqlite3

import aiohttp
import openai
import pytest
from business import DEMO, admin, bearer, biz_config, chat, credits
from conftest import Running
from stores import ENGINES, fresh_database

from plugins.accounts import ACCOUNTS, db
from proxy.app import make_app
from proxy.store import open_store


def narrow_config(**extra) -> dict:
    keys = [{"name": "demo", "key": DEMO, "credits": 5.0},
            {"name": "narrow", "key": "sk-narrow-000000", "credits": 0.0001, "models": ["echo"],
             "limits": {"rpd": 1}}]
    config = biz_config(keys=keys, **extra)
    config["models"]["echo2"] = {"provider": "local", "price": {"input": 1.0, "output": 2.0}}
    return config


async def rows(running, columns: str = "*") -> list[tuple]:
    accounts = running.gw.services.get(ACCOUNTS)
    if accounts is not None:
        await accounts.writer.flush()
    return await running.gw.store.fetchall(f"select {columns} from tollway_ledger order by time, id")


async def test_one_row_per_request_except_unauthenticated(start_gateway):
    running = await start_gateway(narrow_config())
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running, None))[0] == 401
        assert (await chat(s, running, "sk-wrong"))[0] == 401
        _, _, ok = await chat(s, running, DEMO, content="a b c")
        assert (await chat(s, running, DEMO, stream=True))[0] == 200
        assert (await chat(s, running, DEMO, model="nope"))[0] == 404
        assert (await chat(s, running, "sk-narrow-000000", model="echo2"))[0] == 403
        assert (await chat(s, running, "sk-narrow-000000", max_tokens=1))[0] == 200
        assert (await chat(s, running, "sk-narrow-000000", max_tokens=1))[0] == 429
        assert (await chat(s, running, DEMO, max_tokens=10**8))[0] == 402
        async with s.post(running.url + "/embeddings", headers=bearer(DEMO),
                          json={"model": "echo", "input": "x y"}) as r:
            assert r.status == 200
    got = await rows(running, "key_id, endpoint, model, served_model, provider, status, error_code, stream, "
                              "prompt_tokens, completion_tokens, cost_micro_usd, latency_ms")
    assert [(r[0], r[1], r[2], r[5], r[6], r[7]) for r in got] == [
        ("cfg_demo", "chat", "echo", 200, None, 0),
        ("cfg_demo", "chat", "echo", 200, None, 1),
        ("cfg_demo", "chat", "nope", 404, "model_not_found", 0),
        ("cfg_narrow", "chat", "echo2", 403, "model_not_allowed", 0),
        ("cfg_narrow", "chat", "echo", 200, None, 0),
        ("cfg_narrow", "chat", "echo", 429, "rate_limit_exceeded", 0),
        ("cfg_demo", "chat", "echo", 402, "insufficient_credits", 0),
        ("cfg_demo", "embeddings", "echo", 200, None, 0),
    ]
    first = got[0]
    assert (first[3], first[4]) == ("echo", "local")
    assert first[8] == ok["usage"]["prompt_tokens"] and first[9] == ok["usage"]["completion_tokens"]
    assert first[10] == round(ok["usage"]["cost"] * 1e6) and first[11] > 0
    assert all(r[10] == 0 for r in got if r[5] != 200)
    async with aiohttp.ClientSession() as s:
        spent = sum([(await credits(s, running, k))["spent_micro_usd"] for k in (DEMO, "sk-narrow-000000")])
    assert sum(r[10] for r in got) == spent


async def test_auth_off_records_every_model_request(start_gateway, close_at_end):
    config = biz_config(enabled=["pricing", "ledger"])
    del config["keys"]
    running = await start_gateway(config)
    client = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key="anything"))
    await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a"}])
    got = await rows(running, "key_id, status, cost_micro_usd")
    assert len(got) == 1 and got[0][0] is None and got[0][1] == 200 and got[0][2] > 0


async def test_graceful_shutdown_flushes_everything(start_gateway, tmp_path, close_at_end):
    running = await start_gateway(narrow_config(ledger={"flush_ms": 600000}))
    client = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=DEMO))
    for i in range(25):
        await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"n {i}"}])
    async with aiohttp.ClientSession() as s:
        balance = (await credits(s, running, DEMO))["balance_micro_usd"]
    db = sqlite3.connect(tmp_path / "tollway.db")
    assert db.execute("select count(*) from tollway_ledger").fetchone()[0] == 0  # nothing flushed yet
    await running.server.close()
    assert db.execute("select count(*) from tollway_ledger").fetchone()[0] == 25
    stored = db.execute("select balance_micro_usd, spent_micro_usd from tollway_accounts where id = 'cfg_demo'")
    assert stored.fetchone() == (balance, 5_000_000 - balance)
    assert db.execute("select sum(cost_micro_usd) from tollway_ledger").fetchone()[0] == 5_000_000 - balance


async def test_restart_keeps_balances_keys_ledger_and_limits(start_gateway, aiohttp_server):
    config = narrow_config()
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        _, made = await admin(s, running, "POST", "/admin/keys", {"name": "api", "credits": 0.5,
                                                                   "limits": {"rpm": 1000}})
        for key in (DEMO, made["key"], DEMO):
            assert (await chat(s, running, key, stream=key == DEMO, content="spend some"))[0] == 200
        assert (await chat(s, running, "sk-narrow-000000", max_tokens=1))[0] == 200
        await admin(s, running, "POST", f"/admin/keys/{made['id']}/credits", {"amount": 0.25})
        _, keys_before = await admin(s, running, "GET", "/admin/keys")
        credits_before = [await credits(s, running, k) for k in (DEMO, made["key"])]
    await running.server.close()
    ledger_before = await _read_ledger(running.gw.store.path)

    again = build(config, running)
    r2 = Running(again, await aiohttp_server(make_app(again)))
    async with aiohttp.ClientSession() as s:
        _, keys_after = await admin(s, r2, "GET", "/admin/keys")
        assert keys_after == keys_before
        assert [await credits(s, r2, k) for k in (DEMO, made["key"])] == credits_before
        assert (await chat(s, r2, made["key"]))[0] == 200  # the API key still works
        status, _, body = await chat(s, r2, "sk-narrow-000000", max_tokens=1)  # rpd: 1 survived
        assert status == 429 and "requests per day" in body["error"]["message"]
    await r2.server.close()
    assert (await _read_ledger(running.gw.store.path))[:len(ledger_before)] == ledger_before


async def test_a_key_removed_from_the_yaml_is_revoked(start_gateway, aiohttp_server):
    config = narrow_config()
    running = await start_gateway(config)
    await running.server.close()
    config["keys"] = config["keys"][:1]
    again = build(config, running)
    server = await aiohttp_server(make_app(again))
    async with aiohttp.ClientSession() as s, s.post(
            str(server.make_url("/v1/chat/completions")), headers=bearer("sk-narrow-000000"),
            json={"model": "echo", "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == "revoked_api_key"
    await server.close()


def build(config: dict, running):
    from proxy.gateway import build_gateway

    config = {**config, "storage": {"url": f"sqlite:///{running.gw.store.path}"}}
    return build_gateway(config, path=running.gw.config.path)


async def _read_ledger(path: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("select * from tollway_ledger order by time, id").fetchall()
    finally:
        db.close()


async def test_usage_rollups(start_gateway):
    running = await start_gateway(narrow_config())
    async with aiohttp.ClientSession() as s:
        costs = []
        for content in ("a", "b c", "d e f"):
            costs.append(round((await chat(s, running, DEMO, content=content))[2]["usage"]["cost"] * 1e6))
        await chat(s, running, "sk-narrow-000000", max_tokens=1)
        async with s.get(running.url + "/usage", headers=bearer(DEMO)) as r:
            mine = await r.json()
        [day] = mine["data"]
        assert (day["model"], day["requests"], day["cost_micro_usd"]) == ("echo", 3, sum(costs))
        assert "key_id" not in day and mine["total"]["cost_micro_usd"] == sum(costs)
        async with s.get(running.url + "/usage", headers=bearer(DEMO), params={"since": "2999-01-01"}) as r:
            assert (await r.json())["data"] == []
        status, everyone = await admin(s, running, "GET", "/admin/usage")
        assert status == 200 and sorted(d["key_id"] for d in everyone["data"]) == ["cfg_demo", "cfg_narrow"]
        status, one = await admin(s, running, "GET", "/admin/usage?key=cfg_narrow&model=echo")
        assert [d["requests"] for d in one["data"]] == [1]
        for query, param in (("?sinse=2024-01-01", "sinse"), ("?since=yesterday", "since"),
                             ("?until=2024-13-01", "until")):
            status, body = await admin(s, running, "GET", "/admin/usage" + query)
            assert status == 400 and body["error"]["param"] == param
        async with s.get(running.url + "/usage") as r:
            assert r.status == 401
        async with s.get(running.root + "/admin/usage", headers=bearer(DEMO)) as r:
            assert r.status == 403


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_migrated_ledger_table_is_the_ledger_row(engine, tmp_path):
    """Exactly LedgerRow's fields, in order, after every migration: a field added without
    its migration (or the other way round) fails here, on both engines."""
    async with fresh_database(engine, tmp_path) as url:
        store = open_store(url, tmp_path)
        await store.connect()
        try:
            await db.create_tables(store)
            row = db.LedgerRow(id="r1", time=1.5, day="2026-01-01", key_id="k", account_id="a", endpoint="chat",
                               model="m", served_model="s", provider="p", status=200, error_code="e", stream=1,
                               cache_hit=0, client_gone=0, prompt_tokens=2, completion_tokens=3, cached_tokens=4,
                               reasoning_tokens=5, cost_micro_usd=6, latency_ms=7.5, ttfb_ms=8.5, estimated=1,
                               images=9, characters=10, audio_ms=11, attempts=2, deployments='["p/x","p/y"]',
                               incomplete=1)
            async with store.transaction() as tx:
                await db.write_batch(tx, [row], {}, "writer:test", 1)
            assert await store.fetchall("select * from tollway_ledger") == [tuple(row)]
        finally:
            await store.close()


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_ledger_keeps_only_the_indexes_something_reads(engine, tmp_path):
    """Each index costs every row written: by id (replays, batch lines), by time (the
    request log, budgets, rollup rebuilds) and by key and time (one key's log). The day
    indexes (nothing reads the ledger by day since the rollups) are gone after migration 8."""
    async with fresh_database(engine, tmp_path) as url:
        store = open_store(url, tmp_path)
        await store.connect()
        try:
            await db.create_tables(store)
            if engine == "sqlite":
                found = await store.fetchall("select name from sqlite_master where type = 'index' "
                                             "and tbl_name = 'tollway_ledger' and sql is not null")
            else:
                found = await store.fetchall("select indexname from pg_indexes where tablename = 'tollway_ledger' "
                                             "and schemaname = current_schema() and indexname not like '%pkey'")
            assert sorted(r[0] for r in found) == ["tollway_ledger_key_time", "tollway_ledger_time"]
        finally:
            await store.close()


async def test_every_column_of_a_row_holds_its_own_value(start_gateway):
    """Rows are built positionally (the hot path): each value lands in its named column."""
    import time

    running = await start_gateway(narrow_config())
    before = time.time()
    async with aiohttp.ClientSession() as s:
        status, _, _ = await chat(s, running, DEMO, stream=True, content="one two three")
    assert status == 200
    [row] = await rows(running)
    got = dict(zip(db.LEDGER_COLUMNS, row, strict=True))
    assert got["id"] and before - 1 < got["time"] <= time.time()
    assert got["day"] == time.strftime("%Y-%m-%d", time.gmtime(got["time"]))
    assert (got["key_id"], got["account_id"], got["endpoint"], got["model"], got["served_model"],
            got["provider"], got["status"], got["error_code"]) == (
        "cfg_demo", "cfg_demo", "chat", "echo", "echo", "local", 200, None)
    assert (got["stream"], got["cache_hit"], got["client_gone"], got["cached_tokens"], got["reasoning_tokens"],
            got["estimated"]) == (1, 0, 0, 0, 0, 0)
    assert (got["images"], got["characters"], got["audio_ms"]) == (0, 0, 0)
    assert got["prompt_tokens"] > 0 and got["completion_tokens"] == 3
    assert got["cost_micro_usd"] == got["prompt_tokens"] + 2 * got["completion_tokens"]
    assert 0 < got["ttfb_ms"] <= got["latency_ms"]
