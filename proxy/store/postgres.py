"""PostgreSQL through asyncpg, for several gateway instances sharing state.

``?`` placeholders are rewritten to ``$1, $2...``. Query parameters of the
URL that asyncpg does not know are server settings, so
``postgresql://host/db?search_path=tenant_a`` puts the tables in a schema.

Every statement has a timeout (``COMMAND_TIMEOUT_S``), opening a connection
too (``CONNECT_TIMEOUT_S``): a PostgreSQL that went away is an error, never a
hang; the pool opens new connections when it is back.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ..schema import ConfigError
from .base import Store, TaskGuard, ended

_PLACEHOLDER = re.compile(r"\?")
CONNECT_TIMEOUT_S = 5.0  # opening a connection (the pool reopens them after an outage)
COMMAND_TIMEOUT_S = 60.0  # any statement; nothing on the request path waits on one (see docs/fleet.md)
PING_TIMEOUT_S = 2.0  # /health/ready
HOLDS_TIMEOUT_S = 10.0  # asking a claim's session whether it is still there (see ``holds``)


@functools.lru_cache(maxsize=512)  # the same few statements over and over (the writer's, every flush)
def to_dollar(sql: str) -> str:
    """Rewrite ``?`` placeholders as ``$1, $2, ...``."""
    n = 0

    def sub(_: re.Match) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return _PLACEHOLDER.sub(sub, sql)


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise ConfigError("storage.url: postgresql needs the asyncpg package "
                          "(pip install 'tollway[postgres]')") from None
    return asyncpg


def missing_schema(search_path: str, database: str) -> str:
    """The start-up error when no schema named by ``search_path`` exists. tollway does not create
    it: a misspelt schema would be a new, empty store (YAML keys funded again, no ledger)."""
    names = [n.strip() for n in search_path.split(",") if n.strip() and n.strip() != '"$user"']
    first = names[0] if names else "tollway"
    quoted = first if re.fullmatch(r"[a-z_][a-z0-9_$]*", first) else '"' + first.strip('"').replace('"', '""') + '"'
    return (f"storage.url: PostgreSQL database {database!r} has no schema named by its search_path "
            f"({search_path}); create it (create schema {quoted};) or fix the search_path in storage.url")


class PostgresStore(Store):
    kind = "postgres"
    shared = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None  # an asyncpg pool once connected (asyncpg ships no types)
        self._guard = TaskGuard()
        self._claims: dict[str, Any] = {}  # claim name -> the connection that holds its advisory lock
        self._trying: dict[str, Any] = {}  # claim name -> the connection that tries to take it (kept)
        self._claiming = asyncio.Lock()  # one statement at a time on those connections

    async def connect(self) -> None:
        asyncpg = _asyncpg()
        try:
            # min_size 0: no connection kept open for its own sake (asyncpg would log a traceback
            # each time it failed to reopen it during an outage); each opens when first needed.
            # Each session says whose it is in pg_stat_activity (which instance holds connections,
            # waits for a lock...), unless the URL names its own application_name.
            settings = {} if "application_name=" in self.url else {
                "application_name": f"tollway: process {os.getpid()} on {socket.gethostname()}"[:63]}
            self._pool = await asyncpg.create_pool(self.url, min_size=0, max_size=10, timeout=CONNECT_TIMEOUT_S,
                                                   command_timeout=COMMAND_TIMEOUT_S, server_settings=settings)
            # Say now, in one line, when it cannot be reached, or when no schema of the search_path exists
            # (the tables would have nowhere to go).
            schema, path, database = await self._pool.fetchrow(
                "select current_schema(), current_setting('search_path'), current_database()")
        except Exception as exc:
            await self._drop_pool()
            raise ConfigError(f"storage.url: cannot connect to PostgreSQL: {exc}") from None
        if schema is None:
            await self._drop_pool()
            raise ConfigError(missing_schema(path, database))

    async def _drop_pool(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def close(self) -> None:
        for conn in [*self._claims.values(), *self._trying.values()]:
            try:
                await conn.close(timeout=CONNECT_TIMEOUT_S)  # ends the session: its advisory lock goes with it
            except Exception:  # (a connection cut: PostgreSQL ends the session when it notices)
                conn.terminate()
        self._claims.clear()
        self._trying.clear()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> bool:
        """True when PostgreSQL answers within ``PING_TIMEOUT_S``."""
        try:
            self._guard.check()
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self._pool.fetchval("select 1")
            return True
        except Exception:
            return False

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._guard.check()
        await self._pool.execute(to_dollar(sql), *params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._guard.check()
        await self._pool.executemany(to_dollar(sql), list(rows))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        self._guard.check()
        return [tuple(r) for r in await self._pool.fetch(to_dollar(sql), *params)]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        self._guard.check()
        async with self._pool.acquire() as conn:
            task = self._guard.enter()
            tx = PostgresTransaction(conn)
            try:
                async with conn.transaction():
                    yield tx
            finally:
                tx.conn = None
                self._guard.leave(task)

    async def claim(self, name: str) -> str | None:
        """A session advisory lock, on a connection of its own held until
        ``close()``; PostgreSQL drops it when that session ends (a crash, a
        killed process, a cut connection: ``holds`` tells). Keyed by the name and
        the schema the tables are in. A try that fails keeps its connection for the
        next try (an instance that tries at each poll opens one, not one a poll)."""
        async with self._claiming:
            if name in self._claims:
                return None
            conn = self._trying.pop(name, None)
            if conn is None or conn.is_closed():
                hostname = socket.gethostname()
                conn = await _asyncpg().connect(self.url, timeout=CONNECT_TIMEOUT_S, server_settings={
                    "application_name": f"tollway {name}: process {os.getpid()} on {hostname}"[:63]})
            try:
                key = await conn.fetchval("select hashtextextended('tollway:' || $1 || ':' || current_schema(), 0)",
                                          name)
                if await conn.fetchval("select pg_try_advisory_lock($1)", key):
                    self._claims[name] = conn
                    return None
                holder = await conn.fetchval(
                    "select a.application_name from pg_locks l join pg_stat_activity a on a.pid = l.pid "
                    "where l.locktype = 'advisory' and l.granted and l.classid = $1::bigint::oid "
                    "and l.objid = $2::bigint::oid and l.objsubid = 1 limit 1",
                    (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)
            except BaseException:
                conn.terminate()  # (a session that failed: the next try opens another)
                raise
            self._trying[name] = conn
            return holder or "another session"

    async def holds(self, name: str) -> bool:
        """Whether the claim ``name`` taken here is still this store's: its session still
        answers. A session PostgreSQL ended (a restart, ``pg_terminate_backend``, an idle
        kill) or that does not answer within ``HOLDS_TIMEOUT_S`` (a cut network) has lost,
        or may have lost, its lock to another instance: the claim is dropped (its
        connection closed, so the lock goes if it was still there) and False returned;
        ``claim`` takes it again if nobody else has."""
        async with self._claiming:
            conn = self._claims.get(name)
            if conn is None:
                return False
            try:
                async with asyncio.timeout(HOLDS_TIMEOUT_S):
                    await conn.fetchval("select 1")
                return True
            except Exception:
                del self._claims[name]
                conn.terminate()
                return False


class PostgresTransaction(Store):
    """The statements of one PostgreSQL transaction (one pooled connection)."""

    kind = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn  # an asyncpg connection (None once the transaction ended)

    def _live(self) -> Any:
        if self.conn is None:
            raise ended()
        return self.conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._live().execute(to_dollar(sql), *params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._live().executemany(to_dollar(sql), list(rows))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(r) for r in await self._live().fetch(to_dollar(sql), *params)]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """A savepoint: rolled back alone when its block raises."""
        async with self._live().transaction():
            yield self

    async def claim(self, name: str) -> str | None:
        raise NotImplementedError("take claims on the store, not inside a transaction")
