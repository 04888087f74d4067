"""A charge of the shared ledger stream without a ledger row is stored once, however many
writers hold its entry.

Quotas without the ledger plugin charges each request in Redis with no row: the stream entry
is the charge alone. A writer that takes entries and is slow to commit them (its transaction
waits for PostgreSQL longer than ``hold_ttl``) leaves them idle; another instance's writer
claims them (``XAUTOCLAIM``) and stores them too. A row is stored once (its id is its table's
key), so the second writer skipped it with its charge; a charge alone had no key, and both
writers added it: the stored balance paid twice what Redis took. Here two gateways share
PostgreSQL and Redis; a transaction of the test holds the account's row, so the first writer
to take the entry waits inside its transaction, the other claims the entry after ``hold_ttl``
(1 s) and waits too; then the row is let go.
"""

from __future__ import annotations

import os

import aiohttp
import asyncpg
import pytest
from business import DEMO, biz_config, chat
from fleet import redis_url, until
from stores import PG, fresh_database

from plugins.accounts import ACCOUNTS

pytestmark = pytest.mark.fleet

ACCOUNT = "cfg_demo"


async def lock_waiters(conn: asyncpg.Connection) -> int:
    """How many sessions of this process's gateways wait for a lock now (not another test's,
    when the suite runs in several processes: the store names each session's process)."""
    await conn.execute("select pg_stat_clear_snapshot()")
    return await conn.fetchval("select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                               "and datname = current_database() and application_name like $1",
                               f"tollway: process {os.getpid()} on %")


async def test_a_charge_without_a_row_claimed_by_a_second_writer_is_stored_once(tmp_path, start_gateway):
    async with fresh_database("postgres", tmp_path) as url:
        config = biz_config(keys=[{"name": "demo", "key": DEMO, "credits": 5.0}],
                            enabled=["auth", "ratelimit", "quotas", "pricing"])  # no ledger: charges alone
        config["storage"] = {"url": url, "counters": redis_url() + "&hold_ttl=1"}
        first = await start_gateway(config)
        second = await start_gateway(config)
        books = [first.gw.services[ACCOUNTS], second.gw.services[ACCOUNTS]]
        shared = books[0].shared
        schema = url.rsplit("search_path=", 1)[1]
        holder = await asyncpg.connect(PG, server_settings={"search_path": schema})
        try:
            async with aiohttp.ClientSession() as s:
                status, _, body = await chat(s, first, DEMO, max_tokens=5)  # (seeds the account in Redis)
                assert status == 200, body
            await until(lambda: _stored_all(books, shared), 30, "the first charge stored")
            before = await holder.fetchval("select balance_micro_usd from tollway_accounts where id = $1", ACCOUNT)
            tx = holder.transaction()
            await tx.start()
            await holder.execute("select 1 from tollway_accounts where id = $1 for update", ACCOUNT)
            async with aiohttp.ClientSession() as s:
                status, _, body = await chat(s, first, DEMO, max_tokens=5)
                assert status == 200, body
            await books[0].settles_done()
            redis = shared.link.redis
            await until(lambda: _one_waiter(holder), 60, "a writer waiting for the account's row")
            # The entry idles past hold_ttl in the waiting writer's name; the other writer claims it.
            await until(lambda: _both_wait(holder), 60, "the second writer claiming the entry and waiting too")
            await tx.rollback()  # the row is let go: both transactions go on
            await until(lambda: _stored_all(books, shared), 60, "the stream stored")
            after = await holder.fetchval("select balance_micro_usd from tollway_accounts where id = $1", ACCOUNT)
            bal = int(await redis.hget(shared.prefix + "acct:" + ACCOUNT, "bal"))
        finally:
            await holder.close()
        taken = before - bal  # what Redis charged the second request
        assert taken > 0
        times = (before - after) / taken
        assert after == bal, f"stored balance {after}, Redis {bal}: the charge of {taken} was stored {times:g} times"


async def _one_waiter(conn: asyncpg.Connection) -> bool:
    return await lock_waiters(conn) >= 1


async def _both_wait(conn: asyncpg.Connection) -> bool:
    return await lock_waiters(conn) >= 2


async def _stored_all(books, shared) -> bool:
    """The stream is empty and nothing is pending (each writer's steps ran)."""
    redis = shared.link.redis
    if any(b.writer.taken for b in books):
        return False
    if await redis.xlen(shared.stream):
        return False
    return (await redis.xpending(shared.stream, "writers"))["pending"] == 0

