"""Leases (``redis_leases.py``, ``leases=on``: the default) across three real ``tollway serve``
processes on one Redis and one PostgreSQL: requests served from each instance's leases while
there is room, then, near the edge, every one the exact way; the money and the limits stay the
fleet's.

One fleet for the module: a key funded for a fraction of a burst (stream and not, some left
mid-stream), a key with ``rpd: 300`` hammered through all three, and last, kill -9 of an instance
holding a pool of a key's credit."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from business import bearer, biz_config
from fleet import REDIS, kill_all, redis_url, start_servers, until
from stores import PG, run_pg, schema_name
from test_fleet import ask, leave_mid_stream, stored, stored_by_gone

pytestmark = pytest.mark.fleet

FUNDED = "sk-lease-funded-0001"  # a fraction of its burst
DAILY = "sk-lease-daily-00001"  # rpd 300, unmetered
VICTIM = "sk-lease-victim-0001"  # the kill test's
OPENING = 16000  # (a pool needs free / 16 >= two holds of twice a request's worst case, ~110 here)
RPD = 300
HOLD_TTL = 5


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leases")
    schema = schema_name("tollway_leases")
    asyncio.run(run_pg(f"create schema {schema}"))
    config = biz_config(keys=[{"name": "funded", "key": FUNDED, "credits": OPENING / 1e6},
                              {"name": "daily", "key": DAILY, "credits": None, "limits": {"rpd": RPD}},
                              {"name": "victim", "key": VICTIM, "credits": OPENING / 1e6}])
    config["server"].update(host="127.0.0.1", access_log="off", shutdown_timeout=5)
    counters = redis_url() + f"&hold_ttl={HOLD_TTL}"  # (leases: the default)
    config["storage"] = {"url": f"{PG}?search_path={schema}", "counters": counters}
    # Streams a client leaves after the first chunk: ~2.5 s long, so that a test process starved by
    # its own burst still leaves before the last byte (else the server has told it everything and
    # its row is rightly not "gone", though the test counted nothing told: a flake seen under load).
    config["providers"]["dribble"] = {"kind": "mock", "chunk_delay": 0.25}
    config["models"]["dribble"] = {"provider": "dribble", "price": {"input": 1.0, "output": 2.0}}
    path = tmp / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    servers = asyncio.run(start_servers(path, 3))
    yield servers, schema, counters.partition("prefix=")[2].partition("&")[0]
    kill_all(servers)
    asyncio.run(run_pg(f"drop schema if exists {schema} cascade"))


async def pooled(prefix: str, account: str) -> int:
    """How many credit holds the account has in Redis (with nothing in flight: leased ones)."""
    redis = aioredis.from_url(REDIS)
    try:
        return await redis.zcard(prefix + "holds:" + account)
    finally:
        await redis.aclose()


async def pool_of(prefix: str, account: str) -> list[int]:
    """The amounts of the credit holds the account has in Redis."""
    redis = aioredis.from_url(REDIS)
    try:
        return [int(m.rpartition(b"|")[2]) for m in await redis.zrange(prefix + "holds:" + account, 0, -1)]
    finally:
        await redis.aclose()


async def view(s: aiohttp.ClientSession, server, key: str) -> dict:
    async with s.get(server.url + "/v1/credits", headers=bearer(key)) as r:
        return await r.json()


async def settled_and_stored(s: aiohttp.ClientSession, servers, schema: str, key: str, account: str,
                             rows: int | None = None) -> tuple[dict, tuple[int, int, int]]:
    """Once nothing is held (leases given back when idle) and the store has every row (and the
    balance Redis has): the fleet's view of the key, and (ledger sum, rows, stored balance)."""
    async def done() -> bool:
        seen = await view(s, servers[0], key)
        total, count, balance = await stored(schema, account)
        return seen["reserved_micro_usd"] == 0 and balance == seen["balance_micro_usd"] and \
            (rows is None or count == rows)

    await until(done, timeout=60, what="every hold given back and every row stored")
    return await view(s, servers[0], key), await stored(schema, account)


async def test_leases_then_the_exact_path_never_overspend_and_the_ledger_is_the_money_taken(fleet):
    servers, schema, prefix = fleet
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=150)) as s:
        warm = [await ask(s, servers[i % 3], FUNDED, stream=i % 2 == 0) for i in range(6)]
        assert all(status == 200 for status, _ in warm)
        assert await pooled(prefix, "cfg_funded") > 0  # leases engaged: holds kept between requests
        answers = await asyncio.gather(*(leave_mid_stream(s, servers[i % 3], FUNDED) if i % 10 == 5 else
                                         ask(s, servers[i % 3], FUNDED, stream=i % 2 == 0) for i in range(1700)))
        statuses = [a[0] for a in answers]
        told = [c for _, c in warm] + [a[1] for a in answers if a[1] is not None]
        assert set(statuses) <= {200, 402}, statuses
        assert statuses.count(402) > 100  # exhausted: the last ones ran the exact path into refusals
        seen, (total, rows, balance) = await settled_and_stored(s, servers, schema, FUNDED, "cfg_funded", rows=1706)
    assert balance >= 0 and total == OPENING - balance == OPENING - seen["balance_micro_usd"]
    told_rows, gone = await stored_by_gone(schema, "cfg_funded")
    assert told_rows == sum(told) and told_rows + gone == total and gone > 0


async def test_a_daily_limit_shared_by_the_fleet_never_admits_more_than_the_limit(fleet):
    servers, _, _ = fleet
    payload = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}

    async def one(s: aiohttp.ClientSession, server) -> int:
        async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(DAILY)) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=60)) as s:
        first = [await one(s, servers[i % 3]) for i in range(9)]  # one at a time: each instance leases
        started = time.monotonic()
        statuses = first + list(await asyncio.gather(*(one(s, servers[i % 3]) for i in range(441))))
        elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}
    # rpd 300: a burst of 300, then one every 288 s (the leases are taken from the same limit).
    assert statuses.count(200) <= RPD + 1 + int(elapsed / (86400 / RPD)), statuses.count(200)
    # Near the edge every instance took the exact path: little of the limit was left in leases.
    assert statuses.count(200) >= RPD - 3 * RPD // 50


async def test_kill_9_of_an_instance_holding_a_pool_gives_the_money_back_to_the_others(fleet):
    servers, schema, prefix = fleet
    victim, others = servers[0], servers[1:]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=150)) as s:
        told = [await ask(s, victim, VICTIM, stream=False) for _ in range(4)]
        assert all(status == 200 for status, _ in told)
        pool = await pool_of(prefix, "cfg_victim")
        assert pool  # the victim's pool, nothing in flight
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        killed = time.monotonic()
        while (await view(s, others[0], VICTIM))["reserved_micro_usd"]:
            assert time.monotonic() - killed < HOLD_TTL + 60, "a dead instance's pool did not expire"
            await asyncio.sleep(0.1)
        # Spendable on the others: one request whose worst case needs the dead pool's money
        # (the whole balance but half the pool; a pooled hold is twice a ten-token request's).
        balance = (await view(s, others[0], VICTIM))["balance_micro_usd"]
        big = 10 + (balance - sum(pool) // 2 - max(pool) // 2) // 2  # (output: 2 micro-USD a token)
        status, cost = await big_ask(s, others[0], VICTIM, big)
        assert status == 200, status
        told.append((status, cost))
        seen, (total, _rows, balance) = await settled_and_stored(s, others, schema, VICTIM, "cfg_victim")
    charged = [cost for status, cost in told if status == 200]
    assert balance == seen["balance_micro_usd"] and total == sum(charged) == OPENING - balance


async def big_ask(s: aiohttp.ClientSession, server, key: str, max_tokens: int) -> tuple[int, int | None]:
    payload = {"model": "echo", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "w w w"}]}
    async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(key)) as r:
        body = await r.read()
        return r.status, round(float(r.headers["x-tollway-cost"]) * 1e6) if r.status == 200 else body
