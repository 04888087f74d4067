"""A stop while Redis has just stopped answering still bills what the clients were told.

An answer whose charge could not reach Redis (the connection dropped, or the scripts'
connection timed out on a loaded machine) is told its cost, and the charge waits in the
process until Redis answers again (``Accounts.pending_settles``). A stop that came before
that gave up at once: "stopping with 1 charge(s) Redis never got", an exit status of 0, and
an answer the ledger, the stored balance and Redis never saw (a fleet test's ledger 16 rows
short of what its clients were told). The stop now waits for Redis a few seconds
(``writer.REDIS_BACK_S``) and sends them. Real Redis behind a TCP proxy the test cuts, real
PostgreSQL, the gateway's own shutdown."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import orjson
from business import bearer, biz_config
from conftest import close_within
from fleet import TcpProxy, redis_url, until
from stores import fresh_database

from plugins.accounts import ACCOUNTS

KEY = "sk-stop-blip-000001"
OPENING = 1_000_000


async def test_a_stop_just_after_redis_dropped_bills_the_charge_it_missed(tmp_path, start_gateway):
    proxy = TcpProxy(6379)
    await proxy.start()
    async with fresh_database("postgres", tmp_path) as url:
        config = biz_config(keys=[{"name": "k", "key": KEY, "credits": OPENING / 1e6}])
        config["storage"] = {"url": url, "counters": redis_url(f"redis://127.0.0.1:{proxy.port}/0")}
        config["providers"]["dribble"] = {"kind": "mock", "chunk_delay": 0.05}
        config["models"]["dribble"] = {"provider": "dribble", "price": {"input": 1.0, "output": 2.0}}
        running = await start_gateway(config)
        accounts = running.gw.services[ACCOUNTS]
        payload = {"model": "dribble", "stream": True, "max_tokens": 10, "stream_options": {"include_usage": True},
                   "messages": [{"role": "user", "content": " ".join("w" for _ in range(8))}]}
        async with aiohttp.ClientSession() as s, \
                s.post(running.url + "/chat/completions", json=payload, headers=bearer(KEY)) as r:
            assert r.status == 200
            await r.content.readline()  # admitted (held in Redis) and streaming
            await proxy.cut()  # Redis out of reach when the answer ends
            body = await r.read()
        last = [line for line in body.split(b"\n") if line.startswith(b"data: {")][-1]
        told = round(orjson.loads(last[6:])["usage"]["cost"] * 1e6)
        assert told > 0 and len(accounts.pending_settles) == 1  # told, and its charge waits for Redis

        async def redis_back() -> None:  # Redis answers again once the stop has begun
            await until(lambda: accounts.writer._stopping, 60, "the stop")
            await asyncio.sleep(0.5)
            await proxy.start()

        back = asyncio.ensure_future(redis_back())
        try:
            await close_within(running.server, 60)
        finally:
            await back
            await proxy.close()
        conn = await asyncpg.connect(url.split("?")[0], server_settings={"search_path": url.partition("=")[2]})
        try:
            total, rows = await conn.fetchrow("select coalesce(sum(cost_micro_usd), 0), count(*) from tollway_ledger "
                                              "where account_id = 'cfg_k'")
            balance = await conn.fetchval("select balance_micro_usd from tollway_accounts where id = 'cfg_k'")
        finally:
            await conn.close()
    assert (total, rows, balance) == (told, 1, OPENING - told)
