"""A stop while Redis stays down keeps what Redis was owed in the store, and Redis gets it once.

An answer whose charge could not reach Redis (it went away as the answer ended) was told its
cost; its charge waited in the process, and a stop that outlasted ``SharedCredit.back_s``
gave it away: "stopping with 1 charge(s) Redis never got", neither the ledger nor the stored
balance nor Redis had it. Now the stop stores the charge with its ledger row and an owed row
(``plugins/accounts/redis_owed.py``), and the next instance whose counters answer takes it
from Redis's balance: once, also after a restart that finds the owed rows again, and not at
all when Redis lost its data meanwhile (the account is seeded from the store, which has it).
Real ``tollway serve`` processes, a redis-server of the test's own behind a TCP proxy the test
cuts, a PostgreSQL schema of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from business import ADMIN_HEADERS, bearer, biz_config
from fleet import TcpProxy, kill_all, private_redis, start_servers, stop, until
from stores import fresh_database
from test_lifecycle import Server

from plugins.accounts.redis_scripts import SETTLE

pytestmark = pytest.mark.fleet

KEY = "sk-redis-owed-000001"
ACCOUNT = "cfg_k"
OPENING = 1_000_000
PREFIX = "owed:"


class Fleet:
    """A config on a PostgreSQL schema and a private Redis reached through ``proxy``."""

    def __init__(self, tmp_path, url: str, redis, proxy: TcpProxy, timeout: float = 0.5, prefix: str = PREFIX,
                 key_options: dict | None = None) -> None:
        config = biz_config(keys=[{"name": "k", "key": KEY, "credits": OPENING / 1e6, **(key_options or {})}])
        config["server"].update(host="127.0.0.1", access_log="off")
        config["storage"] = {"url": url, "counters": f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&timeout={timeout}"}
        config["providers"]["dribble"] = {"kind": "mock", "chunk_delay": 0.05}
        config["models"]["dribble"] = {"provider": "dribble", "price": {"input": 1.0, "output": 2.0}}
        self.path = tmp_path / "tollway.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.config = config
        self.url, self.proxy = url, proxy
        self.redis_server = redis
        self.redis = aioredis.Redis.from_url(f"redis://127.0.0.1:{redis.port}/0")
        self.servers: list[Server] = []

    async def start(self) -> Server:
        server = (await start_servers(self.path, 1))[0]
        self.servers.append(server)
        return server

    async def sql(self, query: str, *args):
        schema = self.url.partition("=")[2]
        conn = await asyncpg.connect(self.url.split("?")[0], server_settings={"search_path": schema})
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    async def stored(self) -> tuple[int, int, int, int]:
        """(ledger rows, their sum, the stored balance, owed rows) of the account."""
        (rows, total), = await self.sql("select count(*), coalesce(sum(cost_micro_usd), 0) from tollway_ledger "
                                        "where account_id = $1", ACCOUNT)
        (balance,), = await self.sql("select balance_micro_usd from tollway_accounts where id = $1", ACCOUNT)
        (owed,), = await self.sql("select count(*) from tollway_redis_owed")
        return rows, int(total), int(balance), owed

    async def redis_balance(self) -> int:
        return int(await self.redis.hget(f"{PREFIX}acct:{ACCOUNT}", "bal"))

    async def applied(self) -> bool:
        return (await self.stored())[3] == 0

    async def answer(self, server: Server, lost) -> int:
        """A paid answer whose charge Redis does not get (``lost()``, as it streams): what the
        client was told."""
        payload = {"model": "dribble", "stream": True, "max_tokens": 10, "stream_options": {"include_usage": True},
                   "messages": [{"role": "user", "content": " ".join("w" for _ in range(8))}]}
        async with aiohttp.ClientSession() as s, \
                s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(KEY)) as r:
            assert r.status == 200, await r.text()
            await r.content.readline()  # admitted (held in Redis) and streaming
            await lost()  # Redis out of reach when the answer ends, and for the whole stop
            body = await r.read()
        last = [line for line in body.split(b"\n") if line.startswith(b"data: {")][-1]
        told = round(orjson.loads(last[6:])["usage"]["cost"] * 1e6)
        assert told > 0
        return told

    async def charge_redis_never_gets(self, lost=None) -> int:
        """``answer``, then a stop that outlasts ``back_s``: what the client was told."""
        server = await self.start()
        told = await self.answer(server, lost or self.proxy.cut)
        code, _, err = await stop(server)
        assert code == 0, err
        # Billed at the stop: the ledger and the stored balance have what the client was told.
        assert await self.stored() == (1, told, OPENING - told, 1), err
        assert "applied to Redis by the next instance" in err, err
        return told

    async def charge_redis_runs_late(self) -> int:
        """Redis slow, not gone: the charge's script reaches it after the timeout, so the process
        keeps the charge and ``charge_redis_never_gets``'s stop keeps it in the store; Redis runs
        the script meanwhile (its done marker set, its row in the ledger stream). What the client
        was told."""
        await self.redis.script_load(SETTLE)  # (as any charge before would have: no NOSCRIPT round)
        # Every call waits 2 s for Redis (so the charge, sent as the answer ends, is written before
        # any other call gives up on Redis), and the way to Redis delays everything 4 s.
        self.config["storage"]["counters"] = self.config["storage"]["counters"].replace("timeout=0.5", "timeout=2")
        self.path.write_text(yaml.safe_dump(self.config))

        async def slow() -> None:
            self.proxy.delay = 4.0

        told = await self.charge_redis_never_gets(slow)
        self.proxy.delay = 0.0

        async def ran() -> bool:
            return (len(await self.redis.keys(f"{PREFIX}done:*")) == 1
                    and await self.redis.xlen(f"{PREFIX}ledger") == 1)

        await until(ran, 10, "Redis to run the charge it got late")
        assert await self.redis_balance() == OPENING - told
        return told

    async def close(self) -> None:
        kill_all(self.servers)
        await self.redis.aclose()
        await self.proxy.close()


@asynccontextmanager
async def behind_proxy(tmp_path, make: Callable[..., Fleet] = Fleet,
                       proxy_kind: type[TcpProxy] = TcpProxy) -> AsyncIterator[Fleet]:
    """``make(tmp_path, url, redis, proxy)`` on a fresh PostgreSQL database and a private Redis
    reached through a ``proxy_kind``; closed at the end, whatever happened."""
    async with fresh_database("postgres", tmp_path) as url:
        with private_redis(tmp_path) as redis:
            proxy = proxy_kind(redis.port)
            await proxy.start()
            fleet = make(tmp_path, url, redis, proxy)
            try:
                yield fleet
            finally:
                await fleet.close()


@pytest.fixture
async def fleet(tmp_path):
    async with behind_proxy(tmp_path) as fleet:
        yield fleet


async def test_a_charge_kept_at_a_stop_is_taken_from_redis_once_by_the_next_instance(fleet):
    told = await fleet.charge_redis_never_gets()
    kept = await fleet.sql("select * from tollway_redis_owed")
    assert await fleet.redis_balance() == OPENING  # Redis never got it
    await fleet.proxy.start()  # Redis answers again (with its data)
    second = await fleet.start()
    await until(fleet.applied, 60, "the owed charge applied")
    assert await fleet.redis_balance() == OPENING - told
    assert await fleet.stored() == (1, told, OPENING - told, 0)
    # A restart that finds the owed row again (as if its delete had been lost) applies nothing twice.
    code, _, err = await stop(second)
    assert code == 0, err
    await fleet.sql("insert into tollway_redis_owed select * from json_populate_recordset(null::tollway_redis_owed, "
                    "$1::json)", orjson.dumps([dict(r) for r in kept]).decode())
    assert (await fleet.stored())[3] == 1
    await fleet.start()
    await until(fleet.applied, 60, "the owed row found again")
    assert await fleet.redis_balance() == OPENING - told
    assert await fleet.stored() == (1, told, OPENING - told, 0)


async def test_redis_emptied_while_a_charge_was_owed_seeds_from_the_store_and_applies_nothing(fleet):
    told = await fleet.charge_redis_never_gets()
    await fleet.proxy.start()
    await fleet.redis.flushall()  # Redis restarted empty meanwhile
    server = await fleet.start()
    # A paid request at once: the account is seeded from the store (which has the kept charge),
    # before or after the owed row is looked at.
    async with aiohttp.ClientSession() as s, \
            s.post(server.url + "/v1/chat/completions", headers=bearer(KEY),
                   json={"model": "echo", "messages": [{"role": "user", "content": "a b c"}]}) as r:
        assert r.status == 200, await r.text()
        second = round(float(r.headers["x-tollway-cost"]) * 1e6)
    await until(fleet.applied, 60, "the owed row looked at")

    async def stored_both() -> bool:
        return (await fleet.stored())[0] == 2

    await until(stored_both, 60, "the second request's row stored")
    left = OPENING - told - second
    assert await fleet.stored() == (2, told + second, left, 0)
    assert await fleet.redis_balance() == left


async def test_a_kept_charge_that_redis_ran_after_all_is_not_taken_twice(fleet):
    """A charge kept in the store that Redis ran late (``Fleet.charge_redis_runs_late``): the
    next instance finds its done marker and leaves the owed amount out; its writer finds the
    stream's row stored and skips it."""
    told = await fleet.charge_redis_runs_late()
    await fleet.start()
    await until(fleet.applied, 60, "the owed row looked at")

    async def stream_stored() -> bool:
        return await fleet.redis.xlen(f"{PREFIX}ledger") == 0

    await until(stream_stored, 60, "the stream's entry taken")
    assert await fleet.stored() == (1, told, OPENING - told, 0)
    assert await fleet.redis_balance() == OPENING - told


async def test_a_top_up_redis_never_got_is_kept_at_a_stop_and_added_once(fleet):
    """A top-up stored while Redis is down waits in its process for Redis, like a charge: a
    stop that outlasted ``back_s`` lost it for Redis (the store had the money; Redis's balance,
    what the fleet may spend, never did, until Redis lost its data)."""
    server = await fleet.start()
    async with aiohttp.ClientSession() as s:
        async with s.post(server.url + "/v1/chat/completions", headers=bearer(KEY),
                          json={"model": "echo", "messages": [{"role": "user", "content": "a b c"}]}) as r:
            assert r.status == 200, await r.text()  # the account is in Redis (and charged)
            spent = round(float(r.headers["x-tollway-cost"]) * 1e6)

        async def stored() -> bool:
            return (await fleet.stored())[0] == 1

        await until(stored, 60, "the charge stored")
        await fleet.proxy.cut()
        async with s.post(server.url + f"/admin/accounts/{ACCOUNT}/credits", json={"amount": 0.25},
                          headers=ADMIN_HEADERS) as r:
            assert r.status in (200, 503), await r.text()  # stored (its answer may need Redis)
    code, _, err = await stop(server)
    assert code == 0, err
    left = OPENING - spent + 250_000
    assert (await fleet.stored())[:3] == (1, spent, left), err
    await fleet.proxy.start()
    await fleet.start()
    await until(fleet.applied, 60, "the owed top-up applied")
    assert await fleet.redis_balance() == left


async def test_a_stop_with_the_store_down_too_says_how_many_charges_it_gives_away(tmp_path):
    """PostgreSQL away as well when the stop comes: nothing can keep the charge (it is not in
    Redis, not in the store); the stop says so, with the count, in one error line."""
    async with fresh_database("postgres", tmp_path) as url:
        with private_redis(tmp_path) as redis:
            proxy, way_to_store = TcpProxy(redis.port), TcpProxy(5432)
            await proxy.start()
            await way_to_store.start()
            fleet = Fleet(tmp_path, url.replace(":5432/", f":{way_to_store.port}/"), redis, proxy)
            fleet.url = url  # (the test reads the store directly)
            try:
                async def both() -> None:
                    await proxy.cut()
                    await way_to_store.cut()

                server = await fleet.start()
                told = await fleet.answer(server, both)
                _, _, err = await stop(server)
                assert "stopping with 1 charge(s) and 0 top-up(s) Redis never got" in err, err
                assert "the store could not keep them either" in err, err
                # Each charge given away is logged whole, to be billed by hand.
                assert f"a charge not billed: account {ACCOUNT}, {told} micro-USD, ledger row ('" in err, err
                assert told > 0 and await fleet.stored() == (0, 0, OPENING, 0)
            finally:
                await fleet.close()
                await way_to_store.close()
