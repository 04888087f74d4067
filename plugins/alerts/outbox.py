"""The alert outbox: one row per (event, webhook), in the store, so a restart loses none.

``add`` writes rows (an event whose id is already there is not written again:
the same event from two workers, or re-detected after a restart, is delivered
once). ``claim`` takes the due rows for delivery, moving their ``next_at`` a lease
ahead so another instance does not take them too (the ``where`` is checked again
on the row a concurrent claim changed, on PostgreSQL as on SQLite); a process that
dies mid-delivery leaves them due again when the lease ends. Then each row is
``delivered``, ``retry``-ed later, or ``failed`` for good.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from proxy import Event
from proxy.store import Migration, Store, migrate

MIGRATIONS = (
    Migration(1, "the alert outbox", (
        "create table if not exists tollway_alerts (id text primary key, event_id text not null, "
        "event text not null, url text not null, body text not null, created_at double precision not null, "
        "next_at double precision not null, attempts integer not null default 0, "
        "state text not null default 'pending', delivered_at double precision, last_error text)",
        "create index if not exists tollway_alerts_due on tollway_alerts (state, next_at)",
    )),
)
COLUMNS = ("id", "event_id", "event", "url", "body", "created_at", "next_at")


@dataclass(slots=True)
class Delivery:
    id: str
    event_id: str
    event: str
    url: str
    body: bytes
    attempts: int  # this one included


def body_of(event: Event) -> bytes:
    """What a receiver gets: the JSON it verifies the signature of."""
    return orjson.dumps({"id": event.id, "type": event.name, "created": round(event.time, 3), "data": event.data})


def delivery_id(event_id: str, url: str) -> str:
    return f"{event_id}:{hashlib.sha256(url.encode()).hexdigest()[:12]}"


class Outbox:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def open(self) -> None:
        await migrate(self.store, "alerts", MIGRATIONS)

    async def add(self, rows: list[tuple[Event, str]]) -> None:
        """Write (event, webhook url) rows; those already there stay as they are."""
        if not rows:
            return
        sql = (f"insert into tollway_alerts ({', '.join(COLUMNS)}) values ({', '.join('?' for _ in COLUMNS)}) "
               "on conflict (id) do nothing")
        async with self.store.transaction() as tx:
            await tx.executemany(sql, [(delivery_id(e.id, url), e.id, e.name, url, body_of(e).decode(), e.time,
                                        e.time) for e, url in rows])

    async def claim(self, now: float, lease_until: float, limit: int = 20) -> list[Delivery]:
        async with self.store.transaction() as tx:
            rows = await tx.fetchall(
                "update tollway_alerts set next_at = ?, attempts = attempts + 1 where id in "
                "(select id from tollway_alerts where state = 'pending' and next_at <= ? order by next_at limit ?) "
                "and state = 'pending' and next_at <= ? returning id, event_id, event, url, body, attempts",
                (lease_until, now, limit, now))
        return [Delivery(r[0], r[1], r[2], r[3], r[4].encode(), int(r[5])) for r in rows]

    async def delivered(self, delivery: Delivery, now: float) -> None:
        await self.store.execute("update tollway_alerts set state = 'delivered', delivered_at = ?, last_error = null "
                                 "where id = ?", (now, delivery.id))

    async def retry(self, delivery: Delivery, at: float, error: str) -> None:
        await self.store.execute("update tollway_alerts set next_at = ?, last_error = ? where id = ?",
                                 (at, error[:500], delivery.id))

    async def release(self, ids: list[str], now: float) -> None:
        """Claimed deliveries that were not attempted to the end: due again at ``now``."""
        await self.store.executemany("update tollway_alerts set next_at = ? where id = ? and state = 'pending'",
                                     [(now, i) for i in ids])

    async def failed(self, delivery: Delivery, error: str) -> None:
        await self.store.execute("update tollway_alerts set state = 'failed', last_error = ? where id = ?",
                                 (error[:500], delivery.id))
