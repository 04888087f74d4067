"""A reload that changes several YAML accounts, while a ledger writer adds to their balances
(PostgreSQL): both lock the account rows in one order.

The reload wrote the accounts' policies in the file's order; a writer (this instance's or
another's) adds to balances sorted by account. With the file naming zeta before alpha,
each could hold the row the other waited for: PostgreSQL failed one of them after a
second, the writer's flush (retried) or the reload's (the file's accounts not applied,
"a plugin failed to finish the reload"). The reload now writes them sorted too.
"""

from __future__ import annotations

import asyncio
import copy

import asyncpg
from business import biz_config
from stores import PG, fresh_database

from plugins.accounts import db
from proxy.reload import RELOADER_KEY


async def waiting(conn: asyncpg.Connection, schema: str) -> int:
    """How many sessions at work in ``schema`` wait for a lock (statistics as of now)."""
    await conn.execute("select pg_stat_clear_snapshot()")
    return await conn.fetchval(
        "select count(distinct a.pid) from pg_stat_activity a join pg_locks l on l.pid = a.pid "
        "join pg_class c on c.oid = l.relation join pg_namespace n on n.oid = c.relnamespace "
        "where a.wait_event_type = 'Lock' and n.nspname = $1", schema)


async def test_a_reload_changing_accounts_and_a_writer_adding_to_them_both_commit(start_gateway, tmp_path):
    config = biz_config()
    config["accounts"] = {"zeta": {"credits": 1.0}, "alpha": {"credits": 1.0}}  # (not in sorted order)
    async with fresh_database("postgres", tmp_path) as url:
        config["storage"] = {"url": url}
        running = await start_gateway(config)
        store = running.gw.store
        schema = url.rsplit("search_path=", 1)[1]
        changed = copy.deepcopy(config)
        changed["accounts"] = {name: {"credits": 1.0, "suspended": True} for name in ("zeta", "alpha")}
        holder = await asyncpg.connect(PG, server_settings={"search_path": schema})
        try:
            async with holder.transaction():
                await holder.execute("select 1 from tollway_accounts where id = 'alpha' for update")
                writer = asyncio.ensure_future(db.store_batch(store, [], {"alpha": [-10, 10], "zeta": [-10, 10]},
                                                              "writer:test", 1))
                while await waiting(holder, schema) < 1:
                    await asyncio.sleep(0.01)
                reload = asyncio.ensure_future(running.server.app[RELOADER_KEY].apply(changed))
                while await waiting(holder, schema) < 2:
                    await asyncio.sleep(0.01)
            done = await asyncio.gather(writer, reload, return_exceptions=True)
        finally:
            await holder.close()
        assert done[0] is None
        assert done[1].warnings == ()
        stored = await store.fetchall("select id, balance_micro_usd, policy from tollway_accounts "
                                      "where id in ('alpha', 'zeta') order by id")
        await running.server.close()  # (before its schema goes)
    assert [(aid, balance) for aid, balance, _ in stored] == [("alpha", 999_990), ("zeta", 999_990)]
    assert all(db.policy_from_text(policy, aid).suspended for aid, _, policy in stored)
