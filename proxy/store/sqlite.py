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
import orjson

from ..schema import ConfigError
from .base import Store

# Set while the current task holds the store's transaction.
_IN_TX: contextvars.ContextVar[bool] = contextvars.ContextVar("tollway_sqlite_tx", default=False)


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
        """One statement for the whole batch: the rows go in as one JSON array
        that SQLite unpacks itself (``json_each``). ``executemany`` binds each
        row in Python on aiosqlite's thread, which needs the GIL once per row:
        under load that thread fights the event loop for the GIL row by row
        and a batch of a thousand rows took seconds (see RESULTS.md)."""
        if not rows:
            return
        values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
        async with self._turn():
            await self.db.execute(f"insert into {table} ({', '.join(columns)}) select {values} from json_each(?)",
                                  (orjson.dumps(rows).decode(),))

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
