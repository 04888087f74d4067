"""Redis loses its data while a ledger writer holds stream entries it took and has not stored:
the balance Redis is seeded with again must not count their money as still there.

Their charges were in the Redis that is gone, and are not in PostgreSQL until the writer
commits. An account seeded again from PostgreSQL before that commit was missing them: Redis's
balance too high by them, for good, and the fleet could spend that money again (an
overdraft). Both orders, through the real server, on a redis-server of the test's own
(``FLUSHALL``):

- the writer's transaction is under way (a transaction of the test holds the account's row)
  when the account is seeded again: the seed now waits for that commit;
- the writer took the entries before the loss and begins its transaction after the seed (the
  test holds the book's lock): its commit now takes their charges from Redis's balance too, as
  a negative top-up that the seed did not include.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from business import DEMO, biz_config, chat
from fleet import private_redis, until
from stores import PG, fresh_database

from plugins.accounts import ACCOUNTS

pytestmark = pytest.mark.fleet

ACCOUNT = "cfg_demo"


async def waiting(conn: asyncpg.Connection, event: str | None = None) -> int:
    """How many sessions of this process's gateways wait for a lock (of this kind: ``advisory``...);
    not another test's, when the suite runs in several processes (the store names each session's process)."""
    await conn.execute("select pg_stat_clear_snapshot()")
    return await conn.fetchval("select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                               "and datname = current_database() and ($1::text is null or wait_event = $1) "
                               "and application_name like $2", event, f"tollway: process {os.getpid()} on %")


async def balances(conn: asyncpg.Connection, client: aioredis.Redis, prefix: str) -> tuple[int, int, int]:
    """(stored balance, Redis's balance, Redis's holds) of the account."""
    stored = await conn.fetchval("select balance_micro_usd from tollway_accounts where id = $1", ACCOUNT)
    bal, res = await client.hmget(prefix + "acct:" + ACCOUNT, ["bal", "res"])
    return int(stored), int(bal), int(res)


@pytest.mark.parametrize("order", ["commit_under_way", "commit_after_seed"])
async def test_charges_taken_before_redis_lost_its_data_are_not_spendable_again(tmp_path, start_gateway, order):
    async with fresh_database("postgres", tmp_path) as url:
        with private_redis(tmp_path) as server:
            config = biz_config(ledger={"flush_ms": 60_000})  # the test runs the writer's steps
            config["storage"] = {"url": url, "counters": server.url}
            running = await start_gateway(config)
            book = running.gw.services[ACCOUNTS]
            writer, shared = book.writer, book.shared
            client = aioredis.Redis(port=server.port)
            conn = await asyncpg.connect(PG, server_settings={"search_path": url.rsplit("search_path=", 1)[1]})
            try:
                async with aiohttp.ClientSession() as s:
                    assert (await chat(s, running, DEMO, max_tokens=5))[0] == 200
                    await writer.drain_shared()
                    status, headers, body = await chat(s, running, DEMO, max_tokens=5)
                    assert status == 200, body
                    charge = round(float(headers["x-tollway-cost"]) * 1e6)
                    await book.settles_done()
                    assert charge > 0 and await client.xlen(shared.stream) == 1
                    holder = conn.transaction()
                    if order == "commit_under_way":
                        await holder.start()
                        await conn.execute("select 1 from tollway_accounts where id = $1 for update", ACCOUNT)
                        step = asyncio.ensure_future(writer.flush_shared())
                        await until(lambda: _waits(conn), 60, "the writer's transaction waiting for the row")
                    else:
                        await book.lock.acquire()
                        step = asyncio.ensure_future(writer.flush_shared())
                        await until(lambda: writer.taken is not None, 60, "the writer taking the entry")
                    await client.flushall()  # Redis forgets the account, the stream, everything
                    seeded = asyncio.ensure_future(chat(s, running, DEMO, max_tokens=5))
                    if order == "commit_under_way":
                        await until(lambda: seeded.done() or _waits(conn, "advisory"), 60,
                                    "the seed read, or waiting for the writer's commit")
                        await holder.rollback()
                    else:
                        await seeded
                        book.lock.release()
                    await step
                    status, headers, body = await seeded
                    assert status == 200, body
                    await writer.drain_shared()
                stored, bal, res = await balances(conn, client, shared.prefix)
                await running.close()  # while its Redis runs (the test's end stops it)
            finally:
                if book.lock.locked():
                    book.lock.release()
                await conn.close()
                await client.aclose()
            assert res == 0
            assert bal == stored, f"Redis's balance {bal} vs stored {stored} (the taken charge was {charge})"


async def _waits(conn: asyncpg.Connection, event: str | None = None) -> bool:
    return await waiting(conn, event) >= 1
