"""A clean stop of a whole fleet leaves every charge in PostgreSQL, at once.

Two real ``tollway serve`` processes on one Redis and one PostgreSQL, a paid burst
through both, SIGTERM to both while it runs: when the last one has exited, the
ledger in the store is the money Redis took and what the clients were told, and the
ledger stream holds nothing (no entry a stopping writer had read and left pending
for another writer to claim after ``hold_ttl``: there is no other writer)."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from business import bearer, biz_config
from fleet import kill_all, redis_url, start_servers, until
from stores import PG, schema_name
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

KEY = "sk-fleet-stop-000001"
OPENING = 5_000_000  # $5: more than the burst can spend (every answer is charged in full)


async def ask(s: aiohttp.ClientSession, server: Server, stream: bool, words: int) -> int | None:
    """Micro-USD the client was told, or None (refused or cut by the stop: told nothing)."""
    payload = {"model": "echo", "stream": stream, "max_tokens": 10, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": " ".join("w" for _ in range(words))}]}
    try:
        async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(KEY)) as r:
            body = await r.read()
            if r.status != 200:
                assert r.status == 503, body  # the stop: answered, not charged
                return None
            if stream:
                assert body.endswith(b"data: [DONE]\n\n"), body
                last = [line for line in body.split(b"\n") if line.startswith(b"data: {")][-1]
                return round(orjson.loads(last[6:])["usage"]["cost"] * 1e6)
            return round(float(r.headers["x-tollway-cost"]) * 1e6)
    except aiohttp.ClientError:
        return None  # not answered (the listener had closed): told nothing


async def test_sigterm_to_every_instance_mid_burst_leaves_every_charge_stored(tmp_path):
    schema = schema_name("tollway_fstop")
    counters = redis_url()
    prefix = counters.partition("prefix=")[2]
    db = await asyncpg.connect(PG)
    await db.execute(f"create schema {schema}")
    config = biz_config(keys=[{"name": "k", "key": KEY, "credits": OPENING / 1e6}])
    config["server"].update(host="127.0.0.1", access_log="off")
    config["plugins"]["ledger"] = {"flush_ms": 5}  # a busy writer: the stop lands in one of its steps
    config["storage"] = {"url": f"{PG}?search_path={schema}", "counters": counters}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    servers: list[Server] = []
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        servers = await start_servers(path, 2)
        answered = 0

        async def one(s: aiohttp.ClientSession, i: int) -> int | None:
            nonlocal answered
            told = await ask(s, servers[i % 2], stream=i % 3 == 0, words=1 + i % 9)
            answered += 1
            return told

        # No kept-alive connections: each request is answered whole or refused at connect.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40, force_close=True)) as s:
            burst = [asyncio.ensure_future(one(s, i)) for i in range(300)]
            await until(lambda: answered >= 100, 120, "the first answers")
            for server in servers:  # mid-burst: the writers are taking stream entries as they come
                server.proc.send_signal(signal.SIGTERM)
            told = [t for t in await asyncio.gather(*burst) if t is not None]
        for code, _, err in await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers)):
            assert code == 0, err[-3000:]
        assert len(told) >= 100
        # Every instance has exited: nothing can store anything any more. Now, not after a claim:
        total, rows = await db.fetchrow(f"select coalesce(sum(cost_micro_usd), 0), count(*) "
                                        f"from {schema}.tollway_ledger where account_id = 'cfg_k'")
        balance = await db.fetchval(f"select balance_micro_usd from {schema}.tollway_accounts where id = 'cfg_k'")
        taken = OPENING - int(await client.hget(prefix + "acct:cfg_k", "bal"))
        assert await client.hget(prefix + "acct:cfg_k", "res") == b"0"
        assert total == taken == sum(told) == OPENING - balance, (total, taken, sum(told), OPENING - balance)
        assert rows == len(told)
        assert await client.xlen(prefix + "ledger") == 0  # every entry stored and removed
        pending = await client.xpending(prefix + "ledger", "writers")
        assert pending["pending"] == 0, pending
    finally:
        kill_all(servers)
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await db.execute(f"drop schema if exists {schema} cascade")
        await db.close()
