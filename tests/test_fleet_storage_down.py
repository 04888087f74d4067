"""PostgreSQL going away under two real ``tollway serve`` processes, and coming back.

The path to PostgreSQL goes through a TCP proxy of the test's own, which it
cuts (every connection dropped, new ones refused) and restores. While it is
cut: requests go on (metered ones too: their charges and rows wait in the
Redis stream, other rows in each process), ``/health/ready`` answers 503 with
``"storage": "down", "counters": "ok"``; at the queue's bound
(``plugins.ledger.max_queue_rows``) new requests are refused with 503
``storage_unavailable`` rather than queue rows. Once it is back, without a
restart: every queued row is written once, and the ledger, the balance and
what the clients were told agree exactly.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import pytest
import yaml
from business import ADMIN_HEADERS, bearer, biz_config
from fleet import TcpProxy, kill_all, redis_url, start_servers, until
from stores import PG, schema_name
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

PAID = "sk-pgdown-paid-000001"  # $5, metered
FREE = "sk-pgdown-free-000001"  # unmetered
BOUND = 40


async def ask(s: aiohttp.ClientSession, server: Server, key: str, stream: bool = False) -> tuple[int, dict, int]:
    """(status, error body or {}, micro-USD the client was told it cost, 0 unless 200)."""
    payload = {"model": "echo", "max_tokens": 5, "stream": stream, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": "a few words here"}]}
    async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(key)) as r:
        if r.status != 200:
            return r.status, await r.json(), 0
        if stream:
            import orjson

            body = await r.read()
            last = [line for line in body.split(b"\n") if line.startswith(b"data: {")][-1]
            return 200, {}, round(orjson.loads(last[6:])["usage"]["cost"] * 1e6)
        await r.read()
        return 200, {}, round(float(r.headers["x-tollway-cost"]) * 1e6)


async def stored(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    """account -> (ledger rows, ledger sum); and "balance" -> (the paid account's stored balance, 0)."""
    out = {a: (int(n), int(total)) for a, n, total in await conn.fetch(
        "select account_id, count(*), coalesce(sum(cost_micro_usd), 0) from tollway_ledger group by account_id")}
    out["balance"] = (int(await conn.fetchval("select balance_micro_usd from tollway_accounts where id = 'cfg_paid'")),
                      0)
    return out


async def test_postgres_down_requests_go_on_the_queue_is_bounded_and_every_row_is_written_once(tmp_path):
    schema = schema_name("tollway_pgdown")
    admin = await asyncpg.connect(PG)
    await admin.execute(f"create schema {schema}")
    await admin.execute(f"set search_path = {schema}")
    proxy = TcpProxy(5432)
    await proxy.start()
    config = biz_config(keys=[{"name": "paid", "key": PAID, "credits": 5.0},
                              {"name": "free", "key": FREE, "credits": None}],
                        ledger={"flush_ms": 100, "max_queue_rows": BOUND})
    config["server"].update(host="127.0.0.1", access_log="off")
    config["storage"] = {"url": f"postgresql://postgres@127.0.0.1:{proxy.port}/test?search_path={schema}",
                         "counters": redis_url()}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    servers: list[Server] = []
    try:
        servers = await start_servers(path, 2)
        a, b = servers
        told: list[int] = []  # what the paid key's clients were told, each success
        free_ok = 0
        async with aiohttp.ClientSession() as s:
            for server in servers:  # each instance has the account in Redis (seeded while the store answers)
                status, _, cost = await ask(s, server, PAID)
                assert status == 200
                told.append(cost)
            await until(lambda: _rows(admin, "cfg_paid", 2), 10, "the first rows to be stored")
            before = await stored(admin)

            await proxy.cut()  # PostgreSQL is gone
            answers = await asyncio.gather(*(ask(s, servers[i % 2], PAID, stream=i % 3 == 0) for i in range(20)),
                                           *(ask(s, servers[i % 2], FREE) for i in range(10)))
            assert [status for status, _, _ in answers] == [200] * 30, answers
            told += [cost for _, _, cost in answers[:20]]
            free_ok += 10
            for server in servers:
                started = time.monotonic()
                async with s.get(server.url + "/health/ready") as r:
                    body = await r.json()
                    assert r.status == 503 and body["storage"] == "down" and body["counters"] == "ok", body
                assert time.monotonic() - started < 3  # bounded by the ping's timeout, never a hang

            # What needs the store itself says so: an admin write, a usage query.
            async with s.post(a.url + "/admin/keys", json={"name": "late", "credits": 1.0},
                              headers=ADMIN_HEADERS) as r:
                body = await r.json()
                assert r.status == 503 and body["error"]["code"] == "storage_unavailable", body
                assert "storage.url" in body["error"]["message"] and r.headers["Retry-After"] == "1"
            async with s.get(b.url + "/v1/usage", headers=bearer(PAID)) as r:
                body = await r.json()
                assert r.status == 503 and body["error"]["code"] == "storage_unavailable", body

            # Up to the bound: then 503 storage_unavailable, for every key, on every instance.
            refused_at = None
            for i in range(3 * BOUND):
                status, body, cost = await ask(s, a, PAID)
                if status != 200:
                    assert status == 503 and body["error"]["code"] == "storage_unavailable", body
                    refused_at = i
                    break
                told.append(cost)
                await asyncio.sleep(0.03)  # the writers count the fleet's queue every flush_ms
            assert refused_at is not None and 5 <= refused_at <= BOUND, refused_at
            await asyncio.sleep(0.3)
            for server in servers:
                for key in (PAID, FREE):
                    status, body, _ = await ask(s, server, key)
                    assert status == 503 and body["error"]["code"] == "storage_unavailable", body

            await proxy.start()  # PostgreSQL is back: no restart of anything
            expected_paid = before["cfg_paid"][0] - 2 + len(told)

            async def drained() -> bool:
                now = await stored(admin)
                return now["cfg_paid"][0] == expected_paid and now.get("cfg_free", (0, 0))[0] == free_ok

            await until(drained, 20, "every queued row to be written")
            for server in servers:
                await until(lambda server=server: _ready(s, server), 10, "/health/ready to say ok again")
                await until(lambda server=server: _served(s, server), 10, "requests to be taken again")
                told.append((await ask(s, server, PAID))[2])
        code_errs = [await asyncio.to_thread(server.stop) for server in servers]
        after = await stored(admin)
        # Every row once: the paid key's rows are its successes, the ledger is the money taken
        # and what its clients were told; the refusals at the bound are not rows.
        assert after["cfg_paid"] == (len(told), sum(told)), (after, len(told), sum(told))
        assert after["balance"][0] == 5_000_000 - sum(told)
        assert after["cfg_free"][0] == free_ok + 2  # and the two after the recovery (_served)
        assert await admin.fetchval("select count(distinct id) = count(*) from tollway_ledger")
        for code, _, err in code_errs:
            assert code == 0, err
            assert err.count("storage: the store cannot be reached") == 1, err
            assert err.count("storage: the store answers again") == 1, err
            assert "Traceback" not in err, err  # an outage is one line each way, not a traceback per retry
        assert "ledger queue full" in code_errs[0][2]
    finally:
        kill_all(servers)
        await proxy.close()
        await admin.execute(f"drop schema if exists {schema} cascade")
        await admin.close()


async def _rows(conn: asyncpg.Connection, account: str, n: int) -> bool:
    return await conn.fetchval("select count(*) from tollway_ledger where account_id = $1", account) == n


async def _ready(s: aiohttp.ClientSession, server: Server) -> bool:
    async with s.get(server.url + "/health/ready") as r:
        return r.status == 200


async def _served(s: aiohttp.ClientSession, server: Server) -> bool:
    return (await ask(s, server, FREE))[0] == 200


async def test_the_store_is_said_back_only_once_it_answers(tmp_path):
    """While PostgreSQL stays gone, the writer's steps that had nothing to write (no rows
    queued) are no sign that it is back: the log says "cannot be reached" once and never
    "answers again" until it does (it said both, over and over, each time a poll failed
    between two empty flushes)."""
    schema = schema_name("tollway_pgback")
    admin = await asyncpg.connect(PG)
    await admin.execute(f"create schema {schema}")
    proxy = TcpProxy(5432)
    await proxy.start()
    config = biz_config(keys=[{"name": "free", "key": FREE, "credits": None}], auth={"poll_ms": 150},
                        ledger={"flush_ms": 50})
    config["server"].update(host="127.0.0.1", access_log="off")
    config["storage"] = {"url": f"postgresql://postgres@127.0.0.1:{proxy.port}/test?search_path={schema}"}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    server = None
    try:
        server = Server(path)
        await server.wait_ready()
        await proxy.cut()
        await asyncio.sleep(2)  # a dozen polls, each failing, with empty flushes between them
        async with aiohttp.ClientSession() as s, s.get(server.url + "/health/ready") as r:
            assert r.status == 503 and (await r.json())["storage"] == "down"
        await proxy.start()
        async with aiohttp.ClientSession() as s:
            await until(lambda: _served(s, server), 10, "a request to be served again")
        await asyncio.sleep(0.5)  # the next step reaches the store and says so
        code, _, err = await asyncio.to_thread(server.stop)
        assert code == 0, err
        assert err.count("storage: the store cannot be reached") == 1, err
        assert err.count("storage: the store answers again") == 1, err
        assert err.index("cannot be reached") < err.index("answers again"), err
    finally:
        kill_all([server] if server is not None else [])
        await proxy.close()
        await admin.execute(f"drop schema if exists {schema} cascade")
        await admin.close()
