"""SQLite through aiosqlite: the embedded default.

``sqlite:///tollway.db`` is relative to the config file's folder,
``sqlite:////var/lib/tollway.db`` is absolute, ``sqlite://:memory:`` lives in memory.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from ..schema import ConfigError
from .base import Store

# Set while the current task holds the store's transaction.
_IN_TX: contextvars.ContextVar[bool] = contextvars.ContextVar("tollway_sqlite_tx", default=False)


# Rows per insert statement: 256 x 21 ledger columns stays far below SQLite's
# limit of 32766 bound values.
INSERT_CHUNK = 256


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, url: str, base_dir: Path) -> None:
        raw = url[len("sqlite://"):]
        if raw in (":memory:", "/:memory:"):
            self.path = ":memory:"
        else:
            raw = raw[1:] if raw.startswith("/") else raw
            path = Path(raw)
            self.path = str(path if path.is_absolute() else base_dir / path)
        self._db: aiosqlite.Connection | None = None
        # One connection: statements outside a transaction wait for it to end.
        self._lock = asyncio.Lock()
        self._insert_sql: dict[tuple[str, int], str] = {}

    async def connect(self) -> None:
        if self.path != ":memory:" and not Path(self.path).parent.is_dir():
            raise ConfigError(f"storage.url: directory {Path(self.path).parent} does not exist")
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("pragma journal_mode=wal")
            await self._db.execute("pragma synchronous=normal")
            await self._db.execute("pragma busy_timeout=5000")
        except Exception as exc:
            raise ConfigError(f"storage.url: cannot open {self.path}: {exc}") from None

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not connected")
        return self._db

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if _IN_TX.get():
            yield
        else:
            async with self._lock:
                yield

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        async with self._turn():
            await self.db.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._turn():
            await self.db.executemany(sql, list(rows))

    async def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        """Many rows per statement (``values (...), (...), ...``), in chunks of
        256, then powers of two, so a handful of statement texts are ever
        prepared. Why not ``executemany``: it binds each row in Python on
        aiosqlite's thread and takes the GIL back once per row; under load that
        thread fights the event loop for the GIL row by row. One statement per
        chunk takes it once, and costs less CPU too (3.4 vs 4.4 µs a row)."""
        i = 0
        async with self._turn():
            while i < len(rows):
                n = min(INSERT_CHUNK, 1 << ((len(rows) - i).bit_length() - 1))
                sql = self._insert_sql.get((table, n))
                if sql is None:
                    one = "(" + ", ".join("?" * len(columns)) + ")"
                    sql = self._insert_sql[(table, n)] = (f"insert into {table} ({', '.join(columns)}) values "
                                                          + ", ".join([one] * n))
                await self.db.execute(sql, [v for row in rows[i:i + n] for v in row])
                i += n

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        async with self._turn(), self.db.execute(sql, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        async with self._lock:
            token = _IN_TX.set(True)
            try:
                await self.db.execute("begin immediate")
                try:
                    yield self
                except BaseException:
                    await self.db.execute("rollback")
                    raise
                await self.db.execute("commit")
            finally:
                _IN_TX.reset(token)
