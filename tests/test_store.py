"""The store contract, on SQLite and PostgreSQL alike (every case runs on both).

- ``insert_rows`` stores every value of a batch of any size, with its type;
- ``transaction()`` yields a new object; its statements are all-or-none,
  nest as savepoints, and the store itself refuses statements from the task
  inside the transaction (on SQLite they would deadlock, on PostgreSQL escape it);
- increments from two connections (two processes) are never lost;
- ``claim`` is exclusive across connections and released by ``close``;
- ``migrate`` applies each step once, also to a database made before
  migrations existed, and two processes migrating at once apply it once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from stores import ENGINES, fresh_database

from proxy.store import open_store
from proxy.store.base import StoreMisuse
from proxy.store.migrations import Migration, migrate, schema_version

COLUMNS = ("id", "n", "big", "x", "note", "missing")
TABLE_SQL = ("create table {t} (id text primary key, n integer not null, big bigint not null, "
             "x double precision, note text, missing text)")
ROWS = [
    ("a", 0, 2**62, 1763750000.123456, "plain", None),
    ("b", -7, -(2**62), 0.1 + 0.2, 'quotes " and \\ and \n newline, ünïcödé, 🚀', None),
    ("c", 1, 0, None, "", "x"),
]


@pytest.fixture(params=ENGINES)
async def opener(request, tmp_path: Path):
    """``await opener()``: a new connected store on one fresh database (call twice: two processes)."""
    opened = []
    async with fresh_database(request.param, tmp_path) as url:
        async def open_one():
            store = open_store(url, tmp_path)
            await store.connect()
            opened.append(store)
            return store

        yield open_one
        for store in opened:
            await store.close()


async def counter_table(store) -> None:
    await store.execute("create table if not exists counters (name text primary key, n bigint not null)")
    await store.execute("insert into counters (name, n) values ('a', 0) on conflict (name) do nothing")


async def count(store) -> int:
    return (await store.fetchone("select n from counters where name = 'a'"))[0]


async def test_insert_rows_round_trip(opener):
    store = await opener()
    await store.execute(TABLE_SQL.format(t="t_rows"))
    async with store.transaction() as tx:
        await tx.insert_rows("t_rows", COLUMNS, ROWS)
        await tx.insert_rows("t_rows", COLUMNS, [])  # nothing to do
    got = await store.fetchall(f"select {', '.join(COLUMNS)} from t_rows order by id")
    assert got == ROWS
    for row in got:
        assert [type(v) for v in row] == [type(v) for v in ROWS[[r[0] for r in ROWS].index(row[0])]]
    many = [(f"r{i:05d}", i, i, i / 3, None, None) for i in range(700)]  # 256 + 256 + 128 + 32 + 16 + 8 + 4
    await store.insert_rows("t_rows", COLUMNS, many)
    assert await store.fetchall(f"select {', '.join(COLUMNS)} from t_rows where id like 'r%' order by id") == many


async def test_run_steps_runs_every_write_in_order_and_all_or_none(opener):
    """A write-behind batch's statements (one trip to SQLite's thread): in order, each
    row of a many-step once, the multi-row insert's values where they belong; a step
    that fails leaves nothing of the batch behind."""
    store = await opener()
    await store.execute(TABLE_SQL.format(t="t_steps"))
    await counter_table(store)
    many = [(f"s{i:03d}", i, i, i / 3, None, None) for i in range(300)]
    async with store.transaction() as tx:
        await tx.run_steps([*tx.insert_steps("t_steps", COLUMNS, ROWS + many),
                            ("update counters set n = n + ? where name = ?", [(2, "a"), (3, "a")], True),
                            ("update counters set n = n * ? where name = 'a'", (10,), False)])
    got = await store.fetchall(f"select {', '.join(COLUMNS)} from t_steps order by id")
    assert got == sorted(ROWS + many)
    assert await count(store) == 50  # (0 + 2 + 3) * 10: in order
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        async with store.transaction() as tx:
            await tx.run_steps([("update counters set n = n + 1", (), False),
                                *tx.insert_steps("t_steps", COLUMNS, [("new", 1, 1, None, None, None)]),
                                *tx.insert_steps("t_steps", COLUMNS, ROWS[:1])])  # "a" is stored already
    assert await count(store) == 50
    assert await store.fetchone("select id from t_steps where id = 'new'") is None
    await store.run_steps([("update counters set n = n + ?", (1,), False)])  # outside a transaction too
    assert await count(store) == 51


async def test_a_transaction_is_its_own_object_and_all_or_none(opener):
    store = await opener()
    await counter_table(store)
    async with store.transaction() as tx:
        assert tx is not store
        await tx.execute("update counters set n = n + 1")
        assert await count(tx) == 1  # its own change, seen inside
    assert await count(store) == 1
    with pytest.raises(ZeroDivisionError):
        async with store.transaction() as tx:
            await tx.execute("update counters set n = n + 10")
            raise ZeroDivisionError
    assert await count(store) == 1  # rolled back
    with pytest.raises(StoreMisuse, match="ended"):
        await tx.execute("update counters set n = n + 1")  # the block is over


async def test_the_store_refuses_statements_from_inside_its_transaction(opener):
    store = await opener()
    await counter_table(store)
    async with store.transaction() as tx:
        await tx.execute("update counters set n = n + 1")
        with pytest.raises(StoreMisuse, match="transaction object"):
            await store.execute("update counters set n = n + 100")
        with pytest.raises(StoreMisuse):
            await store.fetchall("select n from counters")
    assert await count(store) == 1


async def test_nested_transactions_are_savepoints(opener):
    store = await opener()
    await counter_table(store)
    async with store.transaction() as tx:
        await tx.execute("update counters set n = n + 1")
        with pytest.raises(KeyError):
            async with tx.transaction() as inner:
                await inner.execute("update counters set n = n + 10")
                raise KeyError
        async with tx.transaction() as inner:
            await inner.execute("update counters set n = n + 100")
    assert await count(store) == 101


async def test_other_tasks_see_only_committed_rows(opener):
    store = await opener()
    await counter_table(store)
    async with store.transaction() as tx:
        await tx.execute("update counters set n = 5")
        reader = asyncio.create_task(count(store))
        if store.kind == "postgres":  # another connection reads beside the transaction: the old value
            async with asyncio.timeout(30):
                assert await reader == 0
        else:  # SQLite's one connection: the reader waits for the transaction to end
            await asyncio.sleep(0.05)
            assert not reader.done()
    if store.kind != "postgres":
        assert await reader == 5


async def test_increments_from_two_processes_are_never_lost(opener):
    a, b = await opener(), await opener()
    await counter_table(a)

    async def bump(store, times):
        for _ in range(times):
            async with store.transaction() as tx:
                await tx.execute("update counters set n = n + 1")
                await asyncio.sleep(0)

    await asyncio.gather(bump(a, 30), bump(b, 30))
    assert await count(a) == 60


async def test_a_claim_is_exclusive_until_its_holder_closes(opener):
    first, second = await opener(), await opener()
    assert await first.claim("serve") is None
    assert await first.claim("serve") is None  # again, same holder: still its own
    holder = await second.claim("serve")
    assert holder is not None and "process" in holder  # says who holds it
    assert await second.claim("other") is None  # claims are by name
    await first.close()
    assert await second.claim("serve") is None


STEPS = [
    Migration(1, "tables", ("create table if not exists things (id text primary key)",)),
    Migration(2, "a column", ("alter table things add column size integer not null default 7",)),
]


async def test_migrations_apply_once_and_bring_old_databases_up_to_date(opener):
    store = await opener()
    # A database made before migrations: the table exists, no version is recorded.
    await store.execute("create table things (id text primary key)")
    await store.execute("insert into things (id) values ('old')")
    assert await migrate(store, "things", STEPS[:1]) == 1
    assert await schema_version(store, "things") == 1
    assert await migrate(store, "things", STEPS) == 2
    assert await store.fetchall("select id, size from things") == [("old", 7)]
    assert await migrate(store, "things", STEPS) == 2  # nothing left to do
    with pytest.raises(ValueError, match="numbered"):
        await migrate(store, "things", [STEPS[1]])


async def test_two_processes_migrating_at_once_apply_each_step_once(opener):
    a, b = await opener(), await opener()
    applied = []

    async def record(tx):
        applied.append(1)
        await tx.execute("insert into things (id) values ('made-once')")  # a second run would violate the key

    steps = [STEPS[0], Migration(2, "seed", run=record)]
    assert await asyncio.gather(migrate(a, "things", steps), migrate(b, "things", steps)) == [2, 2]
    assert applied == [1]
