"""The interface every store implements."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any


class Store:
    """A SQL database the gateway and its plugins keep their state in.

    Calls are round trips: never make one on a request's hot path (keep what
    requests need in memory and write behind).
    """

    #: "sqlite" or "postgres": plugins use it where SQL differs (rarely).
    kind: str = ""

    async def connect(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    async def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        """Insert many rows at once (write-behind batches). Stores override it
        where one statement beats ``executemany``."""
        if rows:
            await self.executemany(f"insert into {table} ({', '.join(columns)}) "
                                   f"values ({', '.join('?' for _ in columns)})", rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def transaction(self) -> AbstractAsyncContextManager[Store]:
        """Statements inside run atomically: all or none."""
        raise NotImplementedError

    async def ping(self) -> bool:
        """True when the database answers."""
        try:
            await self.fetchone("select 1")
            return True
        except Exception:
            return False
