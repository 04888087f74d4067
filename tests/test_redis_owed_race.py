"""A stop keeping a charge Redis did not answer, while another instance's writer stores the
same charge's row from the ledger stream (Redis ran it after all): charged once, whichever
transaction wins.

A charge whose ``SETTLE`` reached Redis late (after the timeout: its process keeps it) is twice
on its way to the store: the stop keeps it (``redis_owed.keep``: its ledger row, its balance
change and an owed row for Redis) and a writer of the fleet stores its stream entry (its row
and balance change; its owed row resolved). Both read "not stored" and write the same row id:
the test holds PostgreSQL locks so that both have read before either commits, in each order.
The one that loses fails on the row's key and tries again (the stop once more; the writer
without the rows stored meanwhile, ``writer_stream._without_bad_rows``): the ledger, the stored
balance and Redis's balance each have the charge once, and no owed row is left.

Real ``tollway serve`` processes: A reaches Redis through a TCP proxy that delays everything
4 s (so its charge is kept), B reaches Redis directly; a PostgreSQL schema of their own."""

from __future__ import annotations

import asyncio
import types

import aiohttp
import asyncpg
import pytest
import yaml
from business import bearer
from fleet import start_servers, until
from stores import fresh_database
from test_redis_owed import KEY, OPENING, PREFIX, Fleet, behind_proxy

from plugins.accounts.redis_scripts import SETTLE
from plugins.accounts.writer_stream import LOCK_KEY

pytestmark = pytest.mark.fleet


class Locks:
    """PostgreSQL sessions of the test's own that hold what the instances' transactions wait for."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.conns: list[asyncpg.Connection] = []
        self.watcher: asyncpg.Connection | None = None

    async def session(self) -> asyncpg.Connection:
        schema = self.fleet.url.partition("=")[2]
        conn = await asyncpg.connect(self.fleet.url.split("?")[0], server_settings={"search_path": schema})
        self.conns.append(conn)
        return conn

    async def wait_blocked(self, name: str, pids: list[int], why: str) -> int:
        """The backend of the instance ``name`` (its application_name) once it waits for one of ``pids``.
        Looked for from a session of its own, never in a transaction: a transaction sees the sessions
        of pg_stat_activity as they were at its first look (the session holding the account's row
        looked, and never saw a session the instance's pool opened after: 60 s, then a failure)."""
        if self.watcher is None:
            self.watcher = await self.session()
        found = 0

        async def blocked() -> bool:
            nonlocal found
            found = await self.watcher.fetchval("select pid from pg_stat_activity where application_name = $1 and "
                                                 "pg_blocking_pids(pid) && $2::int[]", name, pids) or 0
            return bool(found)

        await until(blocked, 60, why)
        return found

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


async def instance_b(fleet: Fleet, tmp_path):
    """An instance of the same fleet that reaches Redis directly (its writer stores the entry)."""
    config = yaml.safe_load(fleet.path.read_text())
    config["storage"]["counters"] = f"redis://127.0.0.1:{fleet.redis_server.port}/0?prefix={PREFIX}&timeout=2"
    config["storage"]["url"] = fleet.url + "&application_name=tollway-b"
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(config))
    server = (await start_servers(path, 1))[0]
    fleet.servers.append(server)
    return server


async def seeded(fleet: Fleet, server, alone: bool) -> int:
    """A first paid answer (the account in Redis, read from the store before the test locks it),
    stored: what it cost."""
    async with aiohttp.ClientSession() as s, \
            s.post(server.url + "/v1/chat/completions", headers=bearer(KEY),
                   json={"model": "echo", "messages": [{"role": "user", "content": "a b c"}]}) as r:
        assert r.status == 200, await r.text()
        spent = round(float(r.headers["x-tollway-cost"]) * 1e6)

    async def stored() -> bool:
        return (await fleet.stored())[2] == OPENING - spent

    await until(stored, 60, "the first charge stored")
    return spent


# A charge with its ledger row (the ledger plugin), or alone (quotas without it: the stream's
# entry is the charge; the store keeps it once by the entry's key, tollway_stream_charges).
KINDS = {"row": None, "alone": ["auth", "ratelimit", "quotas", "pricing"]}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("first", ["stream_writer", "stop"])
async def test_a_charge_kept_by_a_stop_while_a_writer_stores_it_from_the_stream_is_charged_once(tmp_path, kind,
                                                                                                first):
    async with behind_proxy(tmp_path) as fleet:
        await fleet.redis.script_load(SETTLE)  # (as any charge before would have: no NOSCRIPT round)
        fleet.config["storage"]["counters"] = fleet.config["storage"]["counters"].replace("timeout=0.5", "timeout=2")
        fleet.config["storage"]["url"] = fleet.url + "&application_name=tollway-a"  # (B: tollway-b)
        if KINDS[kind] is not None:
            fleet.config["plugins"]["enabled"] = KINDS[kind]
        fleet.path.write_text(yaml.safe_dump(fleet.config))
        a = await fleet.start()
        await instance_b(fleet, tmp_path)
        spent = await seeded(fleet, a, kind == "alone")
        locks = Locks(fleet)
        try:
            rows = await locks.session()  # the account's row: each side's balance change waits for it
            await rows.execute("begin")
            await rows.execute("select 1 from tollway_accounts where id = 'cfg_k' for update")
            held = rows.get_server_pid()
            stream = await locks.session()  # the writers' lock (as a seed takes it): the writer waits before it reads
            if first == "stop":
                await stream.execute(f"select pg_advisory_lock({LOCK_KEY})")

            async def slow() -> None:
                fleet.proxy.delay = 4.0  # A's charge reaches Redis after A's 2 s timeout: A keeps it

            told = await fleet.answer(a, slow)
            if first == "stream_writer":
                # B's writer read what is stored, wrote the row (or the entry's key), and waits to
                # change the balance; then the stop reads "not stored" and waits (on that row, or
                # the balance's).
                writer = await locks.wait_blocked("tollway-b", [held], "B's writer, the entry written")
                stopping = asyncio.ensure_future(asyncio.to_thread(a.stop))
                await locks.wait_blocked("tollway-a", [held, writer], "the stop's keep")
            else:
                # The stop wrote the row (or nothing: a charge alone has none) and waits to change
                # the balance; B's writer, let through after, reads "not stored" (and finds no owed
                # row to resolve), and waits (on the row the stop wrote, or the balance's).
                await locks.wait_blocked("tollway-b", [stream.get_server_pid()], "B's writer, before it reads")
                stopping = asyncio.ensure_future(asyncio.to_thread(a.stop))
                keep = await locks.wait_blocked("tollway-a", [held], "the stop's keep, its row written")
                await stream.execute(f"select pg_advisory_unlock({LOCK_KEY})")
                await locks.wait_blocked("tollway-b", [keep], "B's writer, after the stop's keep")
            await rows.execute("commit")
            code, _, err = await stopping
            assert code == 0, err
            assert "not billed" not in err, err  # (the stop's keep that lost tried again, and found the row)
        finally:
            await locks.close()
        fleet.proxy.delay = 0.0

        async def settled() -> bool:
            return (await fleet.stored())[3] == 0 and await fleet.redis.xlen(f"{PREFIX}ledger") == 0

        await until(settled, 60, "the stream's entry stored and no owed row left")
        left = OPENING - spent - told
        assert await fleet.stored() == ((0, 0) if kind == "alone" else (2, spent + told)) + (left, 0), err
        assert await fleet.redis_balance() == left, err


async def test_wait_blocked_sees_a_session_opened_after_a_transaction_looked(tmp_path):
    """The test's own waiting: a session opened (and blocked) after the session holding the lock,
    in its transaction, read pg_stat_activity is found."""
    async with fresh_database("postgres", tmp_path) as url:
        locks = Locks(types.SimpleNamespace(url=url))
        late = None
        try:
            rows = await locks.session()
            await rows.execute("create table held (id int primary key)")
            await rows.execute("insert into held values (1)")
            await rows.execute("begin")
            await rows.execute("select 1 from held where id = 1 for update")
            assert await rows.fetchval("select count(*) from pg_stat_activity where application_name = 'late'") == 0
            schema = url.partition("=")[2]
            late = await asyncpg.connect(url.split("?")[0], server_settings={"search_path": schema,
                                                                                 "application_name": "late"})
            update = asyncio.ensure_future(late.execute("update held set id = 1 where id = 1"))
            assert await locks.wait_blocked("late", [rows.get_server_pid()], "the late session") == \
                late.get_server_pid()
            await rows.execute("commit")
            await update
        finally:
            if late is not None:
                await late.close()
            await locks.close()
