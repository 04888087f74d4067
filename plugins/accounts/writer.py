"""The write-behind writer: one task that persists ledger rows and balance changes.

A request only appends a tuple to a list (``append``) or adds to an
account's delta (``Accounts.settle``). Every ``flush_s`` seconds (sooner
when ``batch_rows`` rows wait) the writer takes both and writes them in ONE
transaction, so the stored balances and the stored ledger always agree. It
also polls the store's version counter for changes made by other processes.

Guarantees: a graceful shutdown writes everything. A crash (kill -9, power
cut) loses at most the last ``flush_s`` seconds of ledger rows together with
the balance changes they carried (SQLite runs in WAL mode with
``synchronous=normal``: a committed flush survives a process crash; a power
cut may also lose the last committed transaction).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from proxy.background import stop_task

from . import db

if TYPE_CHECKING:
    from .book import Accounts

log = logging.getLogger("tollway.accounts")


class Writer:
    def __init__(self, book: Accounts, flush_s: float, batch_rows: int, poll_s: float) -> None:
        self.book = book
        self.flush_s = max(flush_s, 0.001)
        self.batch_rows = max(batch_rows, 1)
        self.poll_s = poll_s
        self.rows: list[tuple] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.flushes = 0  # completed flushes that wrote something (tests, metrics)

    def append(self, row: tuple) -> None:
        """Queue one ledger row (the hot path: no I/O)."""
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tollway-accounts-writer")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self.flush()

    async def _run(self) -> None:
        last_poll = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                if time.monotonic() - last_poll >= self.poll_s:
                    last_poll = time.monotonic()
                    await self.book.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("accounts writer: flush failed; will retry")

    async def flush(self) -> None:
        """Write every queued row and balance change now."""
        book = self.book
        async with book.lock:
            if not self.rows and not book.dirty:
                return
            rows, self.rows = self.rows, []
            deltas, book.dirty = book.dirty, {}
            try:
                async with book.store.transaction() as tx:
                    await db.write_batch(tx, rows, deltas)
            except BaseException:
                # Put everything back, in order, for the next attempt.
                self.rows[:0] = rows
                for aid, (dbal, dspent) in deltas.items():
                    d = book.dirty.setdefault(aid, [0, 0])
                    d[0] += dbal
                    d[1] += dspent
                raise
            self.flushes += 1
