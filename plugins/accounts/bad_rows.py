"""Ledger rows the store refuses however often they are sent, found and left out.

A row the store cannot take (a model name with a NUL character, which any key can send and
PostgreSQL's text refuses; a number beyond its column) failed its writer's whole batch, and
the batch was retried whole for ever: the writer stalled, every later row and balance change
waited behind it, and at ``plugins.ledger.max_queue_rows`` every request was refused. After a
batch failed on a statement (not on an unreachable store), its retry first looks for such rows
(``refused``: the rows written in transactions that are rolled back, halving the set that
fails); each is logged once, whole, and left out. A probe that fails for any other reason (a
deadlock, another writer storing the same id meanwhile, the store going away) raises: the
batch is retried as before.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from proxy.store import unreachable

from . import db

log = logging.getLogger("tollway.accounts")


class _Undo(Exception):
    """Ends a probe's transaction (rolled back)."""


def on_a_statement(exc: BaseException) -> bool:
    """Whether a batch failed on one of its statements (its retry looks for rows to leave
    out), rather than on a store that cannot be reached or a cancelled step."""
    return isinstance(exc, Exception) and not unreachable(exc)


def refuses(exc: BaseException) -> bool:
    """Whether ``exc`` is the store refusing the data itself, which no retry changes."""
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):  # PostgreSQL: a data exception, or a constraint (not a duplicate id)
        return state[:2] in ("22", "23") and state != "23505"
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" not in str(exc)
    return isinstance(exc, (OverflowError, ValueError, TypeError, sqlite3.DataError, sqlite3.InterfaceError,
                            sqlite3.ProgrammingError))


async def _fits(store, rows: Sequence) -> bool:
    try:
        async with store.transaction() as tx:
            await db.write_rows(tx, list(rows), {})
            raise _Undo
    except _Undo:
        return True
    except Exception as exc:
        if refuses(exc):
            return False
        raise


async def refused(store, rows: Sequence) -> list[int]:
    """The indexes of the rows the store refuses (none of them stored: their ids are new)."""
    bad: list[int] = []

    async def look(lo: int, hi: int) -> None:
        if await _fits(store, rows[lo:hi]):
            return
        if hi - lo == 1:
            bad.append(lo)
            return
        mid = (lo + hi) // 2
        await look(lo, mid)
        await look(mid, hi)

    if rows:
        await look(0, len(rows))
    return bad


def say_refused(row: Sequence, where: str) -> None:
    log.error("accounts writer: the store refuses ledger row %s (%s); it is left out, here whole: %r",
              row[0], where, tuple(row))
