"""A PostgreSQL schema of its own for one test, so parallel runs never collide."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

PG = "postgresql://postgres@127.0.0.1:5432/test"


@asynccontextmanager
async def pg_schema(prefix: str = "t") -> AsyncIterator[str]:
    """Yields a storage URL whose search_path is a fresh schema (dropped after)."""
    import asyncpg

    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        conn = await asyncpg.connect(PG)
    except Exception as exc:  # say it loudly: a silent skip would hide a broken path
        pytest.fail(f"this test needs PostgreSQL at 127.0.0.1:5432 (database 'test', trust auth): {exc}")
    try:
        await conn.execute(f"create schema {name}")
        yield f"{PG}?search_path={name}"
    finally:
        await conn.execute(f"drop schema if exists {name} cascade")
        await conn.close()
