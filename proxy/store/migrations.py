"""Versioned schema migrations, applied at start-up on SQLite and PostgreSQL alike.

Each component (a plugin, or a part of the core) owns a numbered list of
``Migration`` steps for its tables. ``migrate(store, component, steps)``
applies the steps above the version recorded in ``tollway_schema`` for that
component, each in its own transaction together with the new version, so a
database is never left half-migrated and two processes starting at once
apply each step once (the second waits on the first's row lock, then finds
the step done).

Rules for a new step: append it with the next number; never edit or reorder
a step that has shipped; write SQL both engines accept (``alter table ...
add column ... default ...`` is fine on both). A database made before
migrations existed has no version row: its step 1 must be idempotent
(``create table if not exists``), then the later steps bring it up to date.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .base import Store

SCHEMA_TABLE = ("create table if not exists tollway_schema (component text primary key, "
                "version integer not null, updated_at double precision not null)")


@dataclass(frozen=True)
class Migration:
    """One step: SQL statements, or ``run(tx)`` for what SQL alone cannot say."""

    version: int
    name: str
    statements: tuple[str, ...] = ()
    run: Callable[[Store], Awaitable[None]] | None = None


async def schema_version(store: Store, component: str) -> int:
    """The component's recorded version (0: none yet)."""
    row = await store.fetchone("select version from tollway_schema where component = ?", (component,))
    return int(row[0]) if row else 0


async def migrate(store: Store, component: str, steps: Sequence[Migration]) -> int:
    """Bring ``component``'s tables up to the last step; returns its version."""
    numbers = [s.version for s in steps]
    if numbers != list(range(1, len(steps) + 1)):
        raise ValueError(f"{component}: migrations must be numbered 1, 2, 3... in order, got {numbers}")
    async with store.transaction() as tx:
        if tx.kind == "postgres":  # concurrent "create table if not exists" can collide there
            await tx.execute("select pg_advisory_xact_lock(hashtext('tollway_schema'))")
        await tx.execute(SCHEMA_TABLE)
        await tx.execute("insert into tollway_schema (component, version, updated_at) values (?, 0, ?) "
                         "on conflict (component) do nothing", (component, time.time()))
    if await schema_version(store, component) >= len(steps):
        return len(steps)  # the usual start: nothing to do, no write lock taken
    for step in steps:
        async with store.transaction() as tx:
            # Lock the component's row first (a no-op update), so that a second
            # process waits here, then reads the version the first one left.
            await tx.execute("update tollway_schema set version = version where component = ?", (component,))
            if await schema_version(tx, component) >= step.version:
                continue
            for sql in step.statements:
                await tx.execute(sql)
            if step.run is not None:
                await step.run(tx)
            await tx.execute("update tollway_schema set version = ?, updated_at = ? where component = ?",
                             (step.version, time.time(), component))
    return len(steps)
