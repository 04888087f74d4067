"""Charges of the shared ledger stream that come without a ledger row, each stored once.

An entry of the stream (``redis_credit.py``) is a charge with its ledger row, or a charge
alone: quotas charged a request no ledger plugin recorded, or the store refuses the entry's
row (``bad_rows.py``). A row is stored once because its id is its table's key: a writer that
finds it stored skips the entry, charge and all. A charge alone had no such key: two writers
holding the same entries (one slow past ``hold_ttl``, PostgreSQL away for that long, and
another claimed them) each added its charge to the stored balance. Its key is now the stream
entry's (the stream's name and the entry's id), inserted in the writer's transaction (``on
conflict do nothing``): only the writer whose insert made the key adds the charge.

Keys are kept ``KEEP_S`` (an entry is claimed again within ``hold_ttl``, not days later).
"""

from __future__ import annotations

from collections.abc import Sequence

TABLE = ("create table if not exists tollway_stream_charges (id text primary key, at double precision not null)",)
KEEP_S = 7 * 86400.0
PRUNE_EVERY_S = 3600.0


def key(stream: str, entry_id: bytes) -> str:
    return f"{stream}/{entry_id.decode()}"


async def fresh(tx, keys: Sequence[str], now: float) -> set[str]:
    """Record these charges as stored (in the transaction ``tx``); the keys that were not
    stored before (a key another transaction is inserting waits for its end)."""
    if not keys:
        return set()
    if tx.kind == "postgres":
        rows = await tx.fetchall("insert into tollway_stream_charges (id, at) select k, ?::float8 "
                                 "from unnest(?::text[]) as k on conflict (id) do nothing returning id",
                                 [now, list(keys)])
        return {r[0] for r in rows}
    out: set[str] = set()
    for i in range(0, len(keys), 400):
        part = list(keys[i:i + 400])
        sql = ("insert into tollway_stream_charges (id, at) values " + ", ".join("(?, ?)" for _ in part)
               + " on conflict (id) do nothing returning id")
        out.update(r[0] for r in await tx.fetchall(sql, [v for k in part for v in (k, now)]))
    return out


async def prune(tx, now: float) -> None:
    await tx.execute("delete from tollway_stream_charges where at < ?", (now - KEEP_S,))
