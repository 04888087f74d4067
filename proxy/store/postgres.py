"""PostgreSQL through asyncpg, for several gateway instances sharing state."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ..schema import ConfigError
from .base import Store

_PLACEHOLDER = re.compile(r"\?")


def to_dollar(sql: str) -> str:
    """Rewrite ``?`` placeholders as ``$1, $2, ...``."""
    n = 0

    def sub(_: re.Match) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return _PLACEHOLDER.sub(sub, sql)


class PostgresStore(Store):
    kind = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool = None
        self._conn = None  # set inside a transaction

    async def connect(self) -> None:
        try:
            import asyncpg
        except ImportError:
            raise ConfigError("storage.url: postgresql needs the asyncpg package "
                              "(pip install 'tollway[postgres]')") from None
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=10)
        except Exception as exc:
            raise ConfigError(f"storage.url: cannot connect to PostgreSQL: {exc}") from None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await (self._conn or self._pool).execute(to_dollar(sql), *params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await (self._conn or self._pool).executemany(to_dollar(sql), list(rows))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(r) for r in await (self._conn or self._pool).fetch(to_dollar(sql), *params)]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        async with self._pool.acquire() as conn, conn.transaction():
            tx = PostgresStore(self.url)
            tx._pool, tx._conn = self._pool, conn
            yield tx
