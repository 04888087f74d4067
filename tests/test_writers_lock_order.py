"""Two ledger writers on one PostgreSQL (a fleet: each instance stores the stream entries it
takes, and its own rows) lock the rows they add to in one order.

Each writer's transaction adds to rollup rows (one per hour and key, model...) and to account
balances; a row stays locked until the commit. One writer's batch may name key 1 then key 2,
another's key 2 then key 1 (the order the requests came in): each took its first row and
waited for the other's. PostgreSQL broke that deadlock after a second by failing one
transaction (the flush logged a traceback and was retried). Rows are now locked sorted.

The interleaving is made, not waited for: a third transaction holds the first row both
writers want, until both are queued behind it.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from stores import PG, fresh_database

from plugins.accounts import db
from plugins.accounts.model import Account
from proxy.store import open_store

HOUR = 1_800_000_000.0  # (an hour's start: both rows in one rollup hour)


def row(n: int, key: str, account: str) -> db.LedgerRow:
    return db.LedgerRow(id=f"r{n}", time=HOUR + n, day="2027-01-15", key_id=key, account_id=account,
                        endpoint="chat", model="m", served_model="m", provider="p", status=200, error_code=None,
                        stream=0, cache_hit=0, client_gone=0, prompt_tokens=1, completion_tokens=1,
                        cached_tokens=0, reasoning_tokens=0, cost_micro_usd=10, latency_ms=5.0, ttfb_ms=None)


async def waiting(conn: asyncpg.Connection, pids: list[int]) -> int:
    """How many of these backends wait for a lock (the statistics as of now, not as the
    transaction ``conn`` is in first read them)."""
    await conn.execute("select pg_stat_clear_snapshot()")
    return await conn.fetchval("select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                               "and pid = any($1::int[])", pids)


@pytest.mark.parametrize("what", ["rollups", "balances"])
async def test_two_writers_adding_to_the_same_rows_in_opposite_orders_both_commit(tmp_path, what):
    async with fresh_database("postgres", tmp_path) as url:
        store = open_store(url, tmp_path)
        await store.connect()
        schema = url.rsplit("search_path=", 1)[1]
        holder = await asyncpg.connect(PG, server_settings={"search_path": schema})
        try:
            await db.create_tables(store)
            async with store.transaction() as tx:
                for aid in ("acct-a", "acct-b"):
                    await db.insert_account(tx, Account(aid, 1_000_000), 0.0)
                await db.write_rows(tx, [row(0, "key-a", "acct-a"), row(1, "key-b", "acct-b")], {})
            if what == "rollups":  # the same rows, listed in opposite orders
                one = ([row(2, "key-a", "acct-a"), row(3, "key-b", "acct-b")], {})
                two = ([row(4, "key-b", "acct-b"), row(5, "key-a", "acct-a")], {})
                lock = "select 1 from tollway_rollup_hour where key_id = 'key-a' for update"
            else:
                one = ([], {"acct-a": [-10, 10], "acct-b": [-10, 10]})
                two = ([], {"acct-b": [-10, 10], "acct-a": [-10, 10]})
                lock = "select 1 from tollway_accounts where id = 'acct-a' for update"

            pids: list[int] = []

            async def writer(rows, deltas) -> None:
                async with store.transaction() as tx:
                    pids.append(tx.conn.get_server_pid())
                    await db.write_rows(tx, rows, deltas)

            async with holder.transaction():
                await holder.execute(lock)  # the row both writers lock first (by name)
                first = asyncio.ensure_future(writer(*one))
                while len(pids) < 1 or await waiting(holder, pids) < 1:
                    await asyncio.sleep(0.01)
                second = asyncio.ensure_future(writer(*two))
                while len(pids) < 2 or await waiting(holder, pids) < 2:
                    await asyncio.sleep(0.01)
            results = await asyncio.gather(first, second, return_exceptions=True)
            assert results == [None, None]

            balances = await store.fetchall("select id, balance_micro_usd, spent_micro_usd from tollway_accounts "
                                            "order by id")
            per_key = await store.fetchall("select key_id, requests, cost_micro_usd from tollway_rollup_hour "
                                           "order by key_id")
        finally:
            await holder.close()
            await store.close()
    if what == "rollups":
        assert per_key == [("key-a", 3, 30), ("key-b", 3, 30)]
    else:
        assert balances == [("acct-a", 999_980, 20), ("acct-b", 999_980, 20)]
