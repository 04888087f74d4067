"""Budgets and refills across three real ``tollway serve`` processes on one Redis and one PostgreSQL.

An account made through one instance's admin API with a daily refill and a
daily budget, its keys made through another: the refill is granted once for
the fleet (one row of ``tollway_grants``, the balance every instance shows),
not once per instance; a burst through all three never spends past the
budget, and the ledger is the money taken; a refill changed later (the account
already in Redis) is added once, and every instance sees it at once.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import asyncpg
import pytest
import yaml
from business import ADMIN_HEADERS, bearer, biz_config
from fleet import kill_all, redis_url, start_servers, until
from stores import PG, schema_name
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

BUDGET = 1000  # micro-USD a day: a fraction of the burst
GRANT = 20000  # the daily refill (no rollover): the balance after it, more than the burst can hold


async def ask(s: aiohttp.ClientSession, server: Server, key: str, stream: bool) -> tuple[int, str | None, int]:
    """(status, error code, micro-USD the client was told)."""
    payload = {"model": "echo", "stream": stream, "max_tokens": 10, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": "w w w"}]}
    async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(key)) as r:
        body = await r.read()
        if r.status != 200:
            import orjson

            return r.status, orjson.loads(body)["error"]["code"], 0
        if stream:
            import orjson

            last = [line for line in body.split(b"\n") if line.startswith(b"data: {")][-1]
            return 200, None, round(orjson.loads(last[6:])["usage"]["cost"] * 1e6)
        return 200, None, round(float(r.headers["x-tollway-cost"]) * 1e6)


async def admin_call(s: aiohttp.ClientSession, server: Server, method: str, path: str, body: dict) -> dict:
    async with s.request(method, server.url + path, json=body, headers=ADMIN_HEADERS) as r:
        assert r.status in (200, 201), await r.text()
        return await r.json()


async def balances(s: aiohttp.ClientSession, servers: list[Server], key: str) -> list[int]:
    out = []
    for server in servers:
        async with s.get(server.url + "/v1/credits", headers=bearer(key)) as r:
            out.append((await r.json())["balance_micro_usd"] if r.status == 200 else r.status)
    return out


async def test_a_refill_is_granted_once_for_the_fleet_and_a_budget_holds_across_instances(tmp_path):
    schema = schema_name("tollway_fbud")
    db = await asyncpg.connect(PG)
    await db.execute(f"create schema {schema}")
    await db.execute(f"set search_path = {schema}")
    config = biz_config(keys=[])
    config["server"].update(host="127.0.0.1", access_log="off")
    config["storage"] = {"url": f"{PG}?search_path={schema}", "counters": redis_url()}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    servers: list[Server] = []
    try:
        servers = await start_servers(path, 3)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:
            await admin_call(s, servers[1], "POST", "/admin/accounts", {
                "id": "sub", "credits": 0, "budgets": {"daily": BUDGET / 1e6},
                "refill": {"every": "day", "amount": GRANT / 1e6, "rollover": False}})
            keys = [(await admin_call(s, servers[0], "POST", "/admin/keys",
                                      {"name": f"k{i}", "credits": 0, "account": "sub"}))["key"] for i in range(2)]

            async def granted_everywhere() -> bool:
                return await balances(s, servers, keys[0]) == [GRANT] * 3

            await until(granted_everywhere, 5, "the refill on every instance")
            await asyncio.sleep(1.5)  # every instance's refill task has looked (once a second)
            assert await db.fetchval("select count(*) from tollway_grants where account_id = 'sub'") == 1
            assert await balances(s, servers, keys[1]) == [GRANT] * 3

            # The budget across the fleet: waves of concurrent requests through the three
            # instances, both keys, until a whole wave is refused (what is left of the budget
            # is less than one request's worst case).
            answers: list[tuple[int, str | None, int]] = []
            for _ in range(60):
                wave = await asyncio.gather(*(ask(s, servers[i % 3], keys[i % 2], stream=i % 4 == 0)
                                              for i in range(30)))
                answers += wave
                if all(status != 200 for status, _, _ in wave):
                    break
            assert {status for status, _, _ in answers} == {200, 429}, answers
            assert {code for status, code, _ in answers if status == 429} == {"budget_exceeded"}
            told = [cost for status, _, cost in answers if status == 200]
            assert BUDGET - 200 < sum(told) <= BUDGET, sum(told)  # a worst case here is under 200 (the body bytes)

            async def settled() -> bool:
                async with s.get(servers[2].url + "/v1/credits", headers=bearer(keys[0])) as r:
                    return (await r.json())["reserved_micro_usd"] == 0

            await until(settled, 10, "every hold to be settled")
            after_burst = GRANT - sum(told)
            assert await balances(s, servers, keys[0]) == [after_burst] * 3

            # A refill changed while the account is in Redis: one grant, seen by every instance.
            await admin_call(s, servers[2], "PATCH", "/admin/accounts/sub",
                             {"refill": {"every": "week", "amount": 0.001, "rollover": True}})

            async def topped_up() -> bool:
                return await balances(s, servers, keys[1]) == [after_burst + 1000] * 3

            await until(topped_up, 5, "the new refill on every instance")
            await asyncio.sleep(1.5)
            assert await balances(s, servers, keys[0]) == [after_burst + 1000] * 3
            assert await db.fetchval("select count(*) from tollway_grants where account_id = 'sub'") == 2
        for server in servers:
            server.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers))
        for code, _, err in results:
            assert code == 0, err
            assert "Traceback" not in err, err
        total, rows = await db.fetchrow("select coalesce(sum(cost_micro_usd), 0), count(*) from tollway_ledger "
                                        "where account_id = 'sub'")
        balance = await db.fetchval("select balance_micro_usd from tollway_accounts where id = 'sub'")
        assert rows == len(answers) and total == sum(told) and balance == after_burst + 1000
    finally:
        kill_all(servers)
        await db.execute(f"drop schema if exists {schema} cascade")
        await db.close()
