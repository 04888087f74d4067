"""SQLite through aiosqlite: the embedded default.

``sqlite:///tollway.db`` is relative to the config file's folder,
``sqlite:////var/lib/tollway.db`` is absolute, ``sqlite://:memory:`` lives in memory.

One connection, so one statement or transaction at a time: a transaction
holds the store's turn from ``begin immediate`` to ``commit``, and its own
statements run through the object it yields (see ``base.py``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import aiosqlite

from ..logs import throttled
from ..schema import ConfigError
from .base import Step, Store, TaskGuard, ended
from .sqlite_rows import Flat, InsertTexts, SharedFlat, run_insert

# Rows per insert statement, at most. Binding a statement's values holds the GIL (in C, where
# no switch request can stop it) until SQLite starts its work: 256 ledger rows of 29
# columns held it for about half a millisecond, which the event loop, waiting for
# it, added to whatever request it was serving. 32 rows hold it ~0.1 ms; the
# statement per 32 rows costs ~1% more CPU per flush than one per 256.
INSERT_CHUNK = 32

# Prepared statements the connection keeps (sqlite3's default: 128). The rollups' upserts alone
# may be 120 texts (``plugins/accounts/rollup_upserts.py``), the ledger's inserts 64 (1 to
# ``INSERT_CHUNK`` rows, shared columns or not), each up to ~1M instructions to prepare again
# once evicted; a statement kept costs a few kilobytes (the largest, 32 ledger rows, ~60 KB).
CACHED_STATEMENTS = 384

# None binds as NULL either way. Without an adapter registered for it, sqlite3 looks None
# up as it does any value that is not exactly an int, float, str or bytearray, and that
# look-up ends in an AttributeError formatted and cleared: ~3k instructions per None bound
# (every ledger row binds one or more, on the thread the flush runs on). Registered, None
# costs a dict look-up and one C call that returns it (``{}.get(None)``). The registry is
# the sqlite3 module's, so this holds for every connection in the process, alike.
sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))

# The WAL's checkpoints: run every CHECKPOINT_S (passive: never waits for, nor blocks, a writer)
# on a connection of their own, in a thread of the default executor, not by SQLite's automatic
# checkpoint, which runs inside whichever commit passes 1000 pages: its two fsyncs (~60-100 ms
# on a slow disk, for ~5 ms of CPU) then ride on a ledger flush, whose rows' wait + commit the
# kill -9 promise bounds (README, "What a crash can lose"; results-notes/flushsat.md).
CHECKPOINT_S = 1.0

# How much nicer than the process SQLite's thread runs (Linux: a thread's nice value is its own).
# The thread writes behind (ledger flushes, polls); no model request waits for it (an admin call
# may). At the loop's own priority it shares a busy core with the event loop as an equal, and a
# request that came during a flush's trip waited for the trip's time slice: the p99 at concurrency 1
# of `tollway bench` (the target pinned to one CPU) carried it. At +5 (a third of the loop's weight)
# the waking event loop takes the core at once, while under saturation the thread keeps enough of it
# that a flush's wait + commit stays where it was (+10 stretched it by ~25 ms; SCHED_IDLE starved
# it: 440 ms at 64 connections). A thread cannot get its priority back unprivileged, so this is
# fixed, not raised when flushes run late. Measured: benchmarks/RESULTS.md, "late night".
SQLITE_THREAD_NICENESS = 5

log = logging.getLogger("tollway.storage")


def _run_behind_requests(_conn: sqlite3.Connection) -> None:
    """Lower the calling thread's priority by ``SQLITE_THREAD_NICENESS`` (on aiosqlite's thread).
    Linux only: elsewhere a nice value is the whole process's, the event loop's too."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + SQLITE_THREAD_NICENESS, 19))
    except OSError as exc:  # (a sandbox may refuse it: the writes are the same, only less polite)
        log.warning("storage: could not lower the priority of SQLite's thread (%s); requests may wait behind "
                    "ledger flushes on a busy core", exc)


def checkpoint_connection(path: str) -> sqlite3.Connection:
    """The checkpointer's own connection (used from the default executor's threads, one at a time)."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)

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
        # One connection: a statement waits for the turn; a transaction keeps it to the end.
        self._turn = asyncio.Lock()
        self._guard = TaskGuard()
        self._inserts = InsertTexts()
        self._claims: dict[str, int] = {}  # claim name -> the locked file's descriptor
        self._savepoints = 0
        self._checkpointer: asyncio.Task | None = None
        self._checkpointing: asyncio.Future | None = None  # the checkpoint running in its thread

    async def connect(self) -> None:
        if self.path != ":memory:" and not Path(self.path).parent.is_dir():
            raise ConfigError(f"storage.url: directory {Path(self.path).parent} does not exist")
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None, cached_statements=CACHED_STATEMENTS)
            await in_thread(self._db, _run_behind_requests)
            await self._db.execute("pragma journal_mode=wal")
            await self._db.execute("pragma synchronous=normal")
            await self._db.execute("pragma busy_timeout=5000")
            if self.path != ":memory:":
                await self._db.execute("pragma wal_autocheckpoint=0")  # (CHECKPOINT_S)
                checkpoints = checkpoint_connection(self.path)
                self._checkpointer = asyncio.get_running_loop().create_task(
                    self._checkpoints(checkpoints), name="tollway-sqlite-checkpoints")
        except Exception as exc:
            raise ConfigError(f"storage.url: cannot open {self.path}: {exc}") from None

    async def _checkpoints(self, conn: sqlite3.Connection) -> None:
        """A passive checkpoint every ``CHECKPOINT_S`` (one with nothing new in the WAL reads its
        index and returns), until the store closes; its connection closed after the last."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(CHECKPOINT_S)
                self._checkpointing = loop.run_in_executor(None, conn.execute, "pragma wal_checkpoint(passive)")
                try:
                    await asyncio.shield(self._checkpointing)  # (a cancel: the finally below waits for it)
                except Exception as exc:  # (the next one tries again; the WAL only grows meanwhile)
                    throttled(log, logging.WARNING, "sqlite_checkpoint", "storage: a WAL checkpoint failed: %s: %s",
                              type(exc).__name__, exc)
        finally:
            running, self._checkpointing = self._checkpointing, None
            if running is not None and not running.done():
                await asyncio.wait({running})  # (its thread still uses the connection)
            conn.close()

    async def close(self) -> None:
        task, self._checkpointer = self._checkpointer, None
        if task is not None:  # (first: the main connection, closed last, checkpoints what is left)
            task.cancel()
            await asyncio.wait({task})
        if self._db is not None:
            await self._db.close()
            self._db = None
        for fd in self._claims.values():
            os.close(fd)  # releases the flock
        self._claims.clear()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not connected")
        return self._db

    # -- statements outside a transaction: each waits for the connection's turn ----------
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._guard.check()
        async with self._turn:
            await self.db.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._guard.check()
        async with self._turn:
            await self.db.executemany(sql, list(rows))

    async def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple],
                          shared: Sequence[str] = ()) -> None:
        self._guard.check()
        async with self._turn:
            await self._insert_rows(table, columns, rows, shared)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        self._guard.check()
        async with self._turn:
            return await self._fetchall(sql, params)

    async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        async with self.db.execute(sql, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def _insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple],
                           shared: Sequence[str] = ()) -> None:
        await self._run_steps(self.insert_steps(table, columns, rows, shared))

    def insert_steps(self, table: str, columns: Sequence[str], rows: list[tuple],
                     shared: Sequence[str] = ()) -> list[Step]:
        """Many rows per statement (``values (...), (...), ...``), in chunks of
        ``INSERT_CHUNK`` and one of the rows left (a text per row count, prepared once each:
        a statement more costs ~40k instructions a flush, the 4 + 2 + 1 rows of a 7-row flush
        three where one does). Why not ``executemany``: it binds each row in Python on
        aiosqlite's thread and takes the GIL back once per row; under load that
        thread fights the event loop for the GIL row by row. One statement per
        chunk takes it once, and costs less CPU per row too (measured when it was chosen).
        ``shared``: columns a chunk's rows usually agree on, bound once a chunk when they
        do (``sqlite_rows.py``)."""
        steps: list[Step] = []
        columns, shared = tuple(columns), tuple(shared)
        i = 0
        while i < len(rows):
            n = min(INSERT_CHUNK, len(rows) - i)
            steps.append(self._inserts.chunk(table, columns, shared, rows[i:i + n]))
            i += n
        return steps

    async def run_steps(self, steps: Sequence[Step]) -> None:
        self._guard.check()
        async with self._turn:
            await self._run_steps(steps)

    async def run_atomically(self, steps: Sequence[Step]) -> None:
        self._guard.check()
        async with self._turn:
            # Cancelled while waiting, the trip still ends in a commit or a rollback: the
            # connection is never left inside a transaction.
            await in_thread(self.db, partial(_run_atomically, steps))

    async def _run_steps(self, steps: Sequence[Step]) -> None:
        if steps:
            await in_thread(self.db, partial(_run, steps))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        self._guard.check()
        async with self._turn:
            task = self._guard.enter()
            tx = SQLiteTransaction(self)
            try:
                # The begin inside _ending: a task cancelled while waiting for it (the begin
                # runs anyway, on aiosqlite's thread) rolls it back instead of leaving the
                # one connection inside a transaction nobody ends.
                async with _ending(self.db, "commit", "rollback"):
                    await self.db.execute("begin immediate")
                    yield tx
            finally:
                tx.store = None
                self._guard.leave(task)

    async def claim(self, name: str) -> str | None:
        """An exclusive ``flock`` on ``<database>.<name>.lock`` beside the database
        (not an fcntl lock on the database file, which SQLite's own locks would
        disturb); the kernel drops it when the process dies."""
        if self.path == ":memory:" or name in self._claims:
            return None  # a database in memory belongs to this process alone
        path = f"{self.path}.{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            return holder or "another process"
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"process {os.getpid()} (since {since})\n".encode(), 0)
        self._claims[name] = fd
        return None

    async def holds(self, name: str) -> bool:
        """A ``flock`` lasts as long as its descriptor: while this process runs."""
        return self.path == ":memory:" or name in self._claims


class SQLiteTransaction(Store):
    """The statements of one SQLite transaction (the connection's turn is held)."""

    kind = "sqlite"

    def __init__(self, store: SQLiteStore) -> None:
        self.store: SQLiteStore | None = store

    def _live(self) -> SQLiteStore:
        if self.store is None:
            raise ended()
        return self.store

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._live().db.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._live().db.executemany(sql, list(rows))

    async def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple],
                          shared: Sequence[str] = ()) -> None:
        await self._live()._insert_rows(table, columns, rows, shared)

    def insert_steps(self, table: str, columns: Sequence[str], rows: list[tuple],
                     shared: Sequence[str] = ()) -> list[Step]:
        return self._live().insert_steps(table, columns, rows, shared)

    async def run_steps(self, steps: Sequence[Step]) -> None:
        await self._live()._run_steps(steps)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return await self._live()._fetchall(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """A savepoint: rolled back alone when its block raises."""
        store = self._live()
        store._savepoints += 1
        name = f"tollway_sp{store._savepoints}"
        await store.db.execute(f"savepoint {name}")
        async with _ending(store.db, f"release {name}", f"rollback to {name}", f"release {name}"):
            yield self

    async def claim(self, name: str) -> str | None:
        raise NotImplementedError("take claims on the store, not inside a transaction")


def _run(steps: Sequence[Step], conn: sqlite3.Connection) -> None:
    """The steps, in order, on aiosqlite's thread (its ``sqlite3`` connection)."""
    _run_on(steps, conn.cursor())


def _run_on(steps: Sequence[Step], cur: sqlite3.Cursor) -> None:
    """The steps through one cursor: ``Connection.execute`` and ``executemany`` make a cursor
    each call (and register, then drop, a weak reference to it): ~2.5k instructions a
    statement, eleven statements in a one-row flush."""
    for sql, params, many in steps:
        if many:
            cur.executemany(sql, params)
        elif type(params) is Flat or type(params) is SharedFlat:
            run_insert(cur, sql, params)
        else:
            cur.execute(sql, params)


def _run_atomically(steps: Sequence[Step], conn: sqlite3.Connection) -> None:
    cur = conn.cursor()
    cur.execute("begin immediate")
    try:
        _run_on(steps, cur)
        cur.execute("commit")
    except BaseException:
        if conn.in_transaction:
            conn.execute("rollback")
        raise


async def in_thread(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """``fn(connection)`` on aiosqlite's thread, in ONE trip (its statements
    uninterrupted by any other's). aiosqlite has no public call for it: this uses
    ``Connection._execute`` (the method each of its public calls goes through) and
    ``_conn``, unchanged from 0.17 to 0.22; every ledger flush runs through here."""
    return await db._execute(lambda: fn(db._conn))


@asynccontextmanager
async def _ending(db: aiosqlite.Connection, commit: str, *rollback: str) -> AsyncIterator[None]:
    """Run ``commit`` after the block, or the ``rollback`` statements when it
    raises (or when the commit itself fails). Shielded: a cancellation must not
    leave the one connection inside a transaction that nobody ends."""
    try:
        yield
        await asyncio.shield(db.execute(commit))
    except BaseException:
        for sql in rollback:
            try:
                await asyncio.shield(db.execute(sql))
            except Exception:
                break
        raise
