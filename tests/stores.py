"""Both storage engines for tests: the same cases run on SQLite and on PostgreSQL.

``engine_urls(kind, tmp_path)`` is an async context manager yielding a
storage URL for a fresh database of that kind: a SQLite file in
``tmp_path``, or a PostgreSQL schema of its own (dropped afterwards), so
parallel runs never collide. PostgreSQL must be running at 127.0.0.1:5432
(database ``test``, trust auth): without it the test fails, loudly.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

PG = "postgresql://postgres@127.0.0.1:5432/test"
ENGINES = ("sqlite", "postgres")


def schema_name(stem: str) -> str:
    """A PostgreSQL schema name of a test's own. (Not the clock: two xdist workers that start the
    same module's fixture in the same millisecond made the same name.)"""
    return f"{stem}_{secrets.token_hex(5)}"


async def run_pg(sql: str) -> None:
    """Run ``sql`` on the test PostgreSQL (creating or dropping a test's own schema)."""
    import asyncpg

    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    import asyncpg

    schema = "tollway_t_" + secrets.token_hex(6)
    try:
        conn = await asyncpg.connect(PG)
    except Exception as exc:  # say it loudly: a silent skip would hide a broken path
        pytest.fail(f"this test needs PostgreSQL at 127.0.0.1:5432 (database 'test', trust auth): {exc}")
    try:
        await conn.execute(f"create schema {schema}")
        yield f"{PG}?search_path={schema}"
    finally:
        # A fixture's gateway is closed after this runs (its fixture is torn down last): its
        # writer or batch runner may still be at work in the schema, and PostgreSQL can pick
        # the drop as a deadlock's victim. Once more then: the gateway's transaction is short.
        for attempt in range(5):
            try:
                await conn.execute(f"drop schema if exists {schema} cascade")
                break
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)
        await conn.close()
