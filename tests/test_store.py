"""The stores' batch insert (``insert_rows``): every value comes back as it went in.

SQLite inserts a batch as multi-row statements (256 rows, then powers of
two); PostgreSQL uses executemany. Both must store the same values with the
same types, and every row of a batch of any size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.store import open_store

COLUMNS = ("id", "n", "big", "x", "note", "missing")
TABLE_SQL = ("create table {t} (id text primary key, n integer not null, big bigint not null, "
             "x double precision, note text, missing text)")
ROWS = [
    ("a", 0, 2**62, 1763750000.123456, "plain", None),
    ("b", -7, -(2**62), 0.1 + 0.2, 'quotes " and \\ and \n newline, ünïcödé, 🚀', None),
    ("c", 1, 0, None, "", "x"),
]


async def check_round_trip(store, table: str) -> None:
    await store.execute(f"drop table if exists {table}")
    await store.execute(TABLE_SQL.format(t=table))
    try:
        async with store.transaction() as tx:
            await tx.insert_rows(table, COLUMNS, ROWS)
            await tx.insert_rows(table, COLUMNS, [])  # nothing to do
        got = await store.fetchall(f"select {', '.join(COLUMNS)} from {table} order by id")
        assert got == ROWS
        for row in got:
            assert [type(v) for v in row] == [type(v) for v in ROWS[[r[0] for r in ROWS].index(row[0])]]
        many = [(f"r{i:05d}", i, i, i / 3, None, None) for i in range(700)]  # 256 + 256 + 128 + 32 + 16 + 8 + 4
        await store.insert_rows(table, COLUMNS, many)
        assert await store.fetchall(f"select {', '.join(COLUMNS)} from {table} where id like 'r%' order by id") == many
    finally:
        await store.execute(f"drop table if exists {table}")


async def test_insert_rows_on_sqlite(tmp_path: Path):
    store = open_store("sqlite:///t.db", tmp_path)
    await store.connect()
    try:
        await check_round_trip(store, "t_rows")
    finally:
        await store.close()


async def test_insert_rows_on_postgres():
    store = open_store("postgresql://postgres@127.0.0.1:5432/test", Path("."))
    try:
        await store.connect()
    except Exception as exc:  # say it loudly: a silent skip would hide a broken path
        pytest.fail(f"this test needs PostgreSQL at 127.0.0.1:5432 (database 'test', trust auth): {exc}")
    try:
        await check_round_trip(store, "tollway_test_rows")
    finally:
        await store.close()
