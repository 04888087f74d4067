"""SQLite's multi-row inserts: the statement texts, and the values each chunk of rows binds.

A chunk of rows goes to SQLite as one ``insert ... values (...), (...), ...``
statement (``SQLiteStore.insert_steps``). Binding is most of what a row costs on
SQLite's thread: a text value ~800 instructions (SQLite copies it into memory of
its own, under its mutexes), an integer ~170. The ledger binds 29 values a row,
nine of them texts, and most of them (the day, the key, the account, the model,
the provider, the status, the flags) are the same in every row of a chunk while
one key's traffic flows. So a caller may name ``shared`` columns: a chunk whose
rows all have equal values there binds those values ONCE, as numbered parameters
(``?1`` .. ``?k``) that every row of the statement names, and each row binds only
its other columns. A chunk whose rows differ there binds every value, as before.
The rows stored are the same either way (each row stores its own copy of a value
a parameter holds); what changes is ``k * (n - 1)`` binds fewer a chunk of ``n``.

Equal is Python's ``==``: give as shared only columns whose equal values are
stored alike (texts, integers, NULLs: not a column that may hold both ``1`` and
``1.0``, stored with different types).
"""

from __future__ import annotations

import sqlite3
from itertools import chain
from operator import itemgetter
from typing import Any


class Flat(list):
    """A chunk of rows whose values bind, flattened, to one multi-row insert (flattened
    on SQLite's thread)."""

    __slots__ = ()


class SharedFlat(list):
    """A chunk of rows that may agree on their shared columns (checked on SQLite's thread):
    then ``sql`` binds those once and each row's others; else the step's own statement
    binds every value, as a ``Flat`` chunk does."""

    __slots__ = ("sql", "shared_of", "varying_of")

    def __init__(self, rows: list[tuple], sql: str, shared_of: itemgetter, varying_of: itemgetter) -> None:
        super().__init__(rows)
        self.sql = sql
        self.shared_of = shared_of
        self.varying_of = varying_of


class InsertTexts:
    """The statement texts of one store's multi-row inserts, made once per (table, rows, shared)."""

    def __init__(self) -> None:
        self._texts: dict[tuple, str] = {}
        self._getters: dict[tuple, tuple[itemgetter, itemgetter] | None] = {}

    def chunk(self, table: str, columns: tuple[str, ...], shared: tuple[str, ...], rows: list[tuple]) -> tuple:
        """The step that inserts ``rows`` (one statement, the caller's chunk)."""
        n = len(rows)
        key = (table, columns, n)
        sql = self._texts.get(key)
        if sql is None:
            one = "(" + ", ".join("?" * len(columns)) + ")"
            sql = self._texts[key] = f"insert into {table} ({', '.join(columns)}) values " + ", ".join([one] * n)
        getters = self._layout(columns, shared) if shared and n > 1 else None
        if getters is None:
            return sql, Flat(rows), False
        shared_key = (table, columns, shared, n)
        shared_sql = self._texts.get(shared_key)
        if shared_sql is None:
            shared_sql = self._texts[shared_key] = _shared_text(table, columns, shared, n)
        return sql, SharedFlat(rows, shared_sql, *getters), False

    def _layout(self, columns: tuple[str, ...], shared: tuple[str, ...]) -> tuple[itemgetter, itemgetter] | None:
        """(a row's shared values, its others) as tuples; None when either side has fewer
        than two columns (an ``itemgetter`` of one gives the value, not a tuple: not worth it)."""
        key = (columns, shared)
        if key not in self._getters:
            at = [columns.index(c) for c in shared]
            others = [i for i in range(len(columns)) if i not in at]
            self._getters[key] = (itemgetter(*at), itemgetter(*others)) if len(at) > 1 and len(others) > 1 else None
        return self._getters[key]


def _shared_text(table: str, columns: tuple[str, ...], shared: tuple[str, ...], n: int) -> str:
    """``n`` rows' insert where the shared columns are ``?1`` .. ``?k`` in every row, and the
    others numbered on from ``k + 1`` column by column: the j-th other column of row r is
    ``?(k + 1 + j * n + r)``, so a chunk's values bind as its columns come out of ``zip(*rows)``
    (``run_insert``), with no zipping back into rows."""
    k = len(shared)
    others = [c for c in columns if c not in shared]
    rows = []
    for r in range(n):
        names = {c: f"?{j + 1}" for j, c in enumerate(shared)} | {c: f"?{k + 1 + j * n + r}"
                                                                  for j, c in enumerate(others)}
        rows.append("(" + ", ".join(names[c] for c in columns) + ")")
    return f"insert into {table} ({', '.join(columns)}) values " + ", ".join(rows)


def run_insert(conn: sqlite3.Connection | sqlite3.Cursor, sql: str, rows: Flat | SharedFlat) -> None:
    """One chunk's insert, on SQLite's thread. (zip, list.extend, tuple.count: in C; a comprehension
    would be a Python loop holding the GIL on this thread.) A shared chunk is looked at by
    column (``zip(*rows)``, once): a shared column agrees when every value is ``==`` its first
    (``tuple.count``, identity first, as tuples compare), and the others' values bind column by
    column as they come out (``_shared_text`` numbers them so). Row by row, an ``itemgetter`` of the
    20 shared and one of the 9 other ledger columns cost ~6.5k instructions a row, zipping the
    columns back into rows ~4.5k, this less. The first and last rows are
    compared first: interleaved keys' chunks (whose rows differ) skip the columns."""
    if type(rows) is SharedFlat:
        first: Any = rows.shared_of(rows[0])
        if rows.shared_of(rows[-1]) == first:  # (else they differ: interleaved keys' rows, told at once)
            n = len(rows)
            columns = list(zip(*rows, strict=True))
            for values in rows.shared_of(columns):
                if values.count(values[0]) != n:
                    break
            else:
                # (the shared values once, then each other column's values whole: ``_shared_text``'s
                # numbering; list.extend copies a tuple in C, with no iterator per value)
                values = list(first)
                for column in rows.varying_of(columns):
                    values += column
                conn.execute(rows.sql, values)
                return
    conn.execute(sql, list(chain.from_iterable(rows)))
