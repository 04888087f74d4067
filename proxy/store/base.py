"""The interface every store implements, and the contract both engines keep.

Transactions: ``async with store.transaction() as tx`` yields a NEW object,
on SQLite and PostgreSQL alike, bound to that transaction. Statements run on
``tx`` are atomic (all or none: an exception inside the block rolls them
back) and see each other's changes. ``tx.transaction()`` nests (a savepoint).

The store itself is not the transaction: a statement on ``store`` from the
task that holds a transaction raises ``StoreMisuse`` on both engines (on
SQLite it would wait for that very transaction forever; on PostgreSQL it
would run outside it, on another connection). Other tasks' statements on
``store`` run outside the transaction: on SQLite (one connection) they wait
until it ends, on PostgreSQL they run beside it and see only committed rows.
``tx`` must not be used after its block ends (``StoreMisuse``).

Writers serialise: on SQLite a transaction takes the database's write lock
at ``begin`` (``begin immediate``); on PostgreSQL rows a transaction updated
stay locked until it ends. So ``update t set n = n + ?`` from two processes
never loses one of them on either engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

# One write statement for ``Store.run_steps``: (sql, params, False) or (sql, rows, True).
Step = tuple[str, Any, bool]


class StoreMisuse(RuntimeError):
    """A statement on the store from inside one of its transactions (use the
    transaction's object), or on a transaction that has ended."""


class Store:
    """A SQL database the gateway and its plugins keep their state in.

    Calls are round trips: never make one on a request's hot path (keep what
    requests need in memory and write behind).
    """

    #: "sqlite" or "postgres": plugins use it where SQL differs (rarely).
    kind: str = ""
    #: True when several processes (workers, instances) may serve from it at once.
    shared: bool = False

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

    async def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple],
                          shared: Sequence[str] = ()) -> None:
        """Insert many rows at once (write-behind batches). Stores override it
        where one statement beats ``executemany``. ``shared``: columns the rows
        usually agree on, which a store may bind once for many rows (SQLite does:
        ``sqlite_rows.py``); the rows stored are the same."""
        if rows:
            await self.executemany(f"insert into {table} ({', '.join(columns)}) "
                                   f"values ({', '.join('?' for _ in columns)})", rows)

    def insert_steps(self, table: str, columns: Sequence[str], rows: list[tuple],
                     shared: Sequence[str] = ()) -> list[Step]:
        """``insert_rows`` as steps for ``run_steps``."""
        if not rows:
            return []
        return [(f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' for _ in columns)})",
                 rows, True)]

    async def run_steps(self, steps: Sequence[Step]) -> None:
        """Run write statements in order: ``(sql, params, False)`` once, ``(sql, rows,
        True)`` once per row. A write-behind batch's statements: SQLite runs them all
        in one trip to its thread (each statement its own trip costs the event loop
        a wake-up and a future per statement); PostgreSQL one at a time."""
        for sql, params, many in steps:
            if many:
                await self.executemany(sql, params)
            else:
                await self.execute(sql, params)

    async def run_atomically(self, steps: Sequence[Step]) -> None:
        """``run_steps`` in a transaction of their own: all or none. SQLite runs the
        begin, the steps and the commit in one trip to its thread."""
        async with self.transaction() as tx:
            await tx.run_steps(steps)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def transaction(self) -> AbstractAsyncContextManager[Store]:
        """A new object whose statements run atomically: all or none (see the module's docstring)."""
        raise NotImplementedError

    async def claim(self, name: str) -> str | None:
        """Take the store-wide exclusive claim ``name`` until ``close()`` (or the
        process's death: the operating system or the database releases it, so a
        crash never leaves it behind). None when taken; else what holds it."""
        raise NotImplementedError

    async def holds(self, name: str) -> bool:
        """Whether the claim ``name`` this store took is still its own. A database
        session can end under a live process (PostgreSQL restarted, the connection
        cut): its claim is then gone, maybe to another instance, and False is said
        (once; ``claim`` may take it again)."""
        raise NotImplementedError

    async def ping(self) -> bool:
        """True when the database answers."""
        try:
            await self.fetchone("select 1")
            return True
        except Exception:
            return False


class TaskGuard:
    """Which tasks hold a transaction on a store: a statement on the store
    from one of them is a mistake that would deadlock (SQLite) or escape the
    transaction (PostgreSQL), so both engines refuse it the same way."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def enter(self) -> asyncio.Task | None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        return task

    def leave(self, task: asyncio.Task | None) -> None:
        self._tasks.discard(task)

    def check(self) -> None:
        if self._tasks and asyncio.current_task() in self._tasks:
            raise StoreMisuse("a statement on the store inside one of its transactions: "
                              "run it on the transaction object (async with store.transaction() as tx)")


def ended() -> StoreMisuse:
    return StoreMisuse("this transaction has ended: its object cannot run statements any more")


def refuses_text(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a text value it cannot hold: a NUL character
    (``\\u0000``) or bytes that are not UTF-8, sent as a statement's parameter. SQLite keeps
    such text, so the same request on it finds nothing or stores it."""
    return getattr(exc, "sqlstate", None) in ("22021", "22P05")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached (a connection refused, closed or timed
    out), rather than a statement it refused."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    name = type(exc).__name__
    return type(exc).__module__.startswith("asyncpg") and (
        "Connection" in name or "CannotConnect" in name or name == "InterfaceError")
