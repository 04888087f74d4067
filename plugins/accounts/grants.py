"""The refill grants' table (see ``refills.py``): one row per account and period."""

from __future__ import annotations

GRANTS_TABLE = (
    """create table if not exists tollway_grants (
        account_id text not null,
        period text not null,
        amount_micro_usd bigint not null,
        rollover integer not null,
        time double precision not null,
        primary key (account_id, period))""",
)


async def grants_of(store, account_id: str) -> list[tuple[str, int, float]]:
    """(period, amount granted, time) of an account's grants, oldest first."""
    rows = await store.fetchall("select period, amount_micro_usd, time from tollway_grants where account_id = ? "
                                "order by time", (account_id,))
    return [(r[0], int(r[1]), float(r[2])) for r in rows]
