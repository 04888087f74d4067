"""Budget settles Redis missed (it was down): kept, and applied to the budget's total once.

A request holds its worst case against each budget's total in Redis (``held``) and settles
what it was charged (``SETTLE_TOTALS``: the hold freed, the spend added to ``used``), sent behind
its answer. When Redis did not answer that settle, it was dropped: Redis back with its data,
the total kept the request's hold for the rest of its period (plus a day) and never counted
its spend, so every instance showed the budget's spend without it. Now such a settle waits in
the process (``RedisCounters.pending_totals``, like ``Accounts.pending_settles``), and the
writer's pass sends it when Redis answers (``push``, under the book's ``pushing`` lock); a stop
that outlasts ``SharedCredit.back_s`` keeps it in the store (``tollway_redis_owed_totals``, in
the transaction of ``redis_owed.keep``), and the next instance whose counters answer applies it
(``apply``, from ``redis_owed.apply``) and deletes the row.

Each is applied once. A request's settle names its holds (their members in the total's holds,
``redis_scripts.SETTLE_TOTALS``; kept in the ``life`` column, space-separated): it is the same
script again, which frees each hold where it is (live, or expired meanwhile) and counts the
spend only where it found one, so a settle that was sent and failed (its reply lost: Redis may
have run it), a push whose reply was lost, or a row whose delete failed, counts once and leaves
no hold. (Before, a settle sent and failed added its spend only: counted twice if Redis had run
it, its hold left for the rest of the period if not.) A charge that held nothing (a recovered
batch line's) adds its spend once by its id (``OWED_TOTAL``: the id goes into the total's
applied set, which lives as long as the total). A total Redis does not have (it lost its data,
or the period is over) gets nothing: it is seeded from the store, whose ledger has the charge
(stored by the writer from the stream, or by ``redis_owed.keep`` at the stop).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from proxy.logs import throttled

if TYPE_CHECKING:
    from .redis_counters import RedisCounters

log = logging.getLogger("tollway.counters")

TABLE = "tollway_redis_owed_totals"
COLUMNS = ("id", "name", "held", "spent", "life", "created_at")

# KEYS: the total's hash, Redis's life token, the total's applied set. ARGV: held (to free),
# spent (to add), the life it was held in, its id. Reply: 1 applied, 0 applied before, -1 no
# such total (Redis lost it, or its period is over: seeded from the store, which has the charge).
OWED_TOTAL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[3], ARGV[4]) == 0 then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
local held = tonumber(ARGV[1])
if held > 0 and redis.call('GET', KEYS[2]) == ARGV[3] then
  if redis.call('HINCRBY', KEYS[1], 'held', -held) < 0 then redis.call('HSET', KEYS[1], 'held', 0) end
end
redis.call('HINCRBY', KEYS[1], 'used', ARGV[2])
return 1
"""


class OwedTotal(NamedTuple):
    id: str  # unique (the applied set's member)
    name: str  # the total's (``budget:k:<key>:<period>``)
    held: int  # (rows of an older version: the hold to free, in the Redis life ``life``)
    spent: int
    life: str  # the request's hold members, space-separated ('': it held nothing)


def missed(counters: RedisCounters, names: Sequence[str], spent: int, holds: Sequence[str]) -> None:
    """A budget settle Redis did not answer (it may have run it, if it was sent): kept until it
    does (see the module's doc). Its holds stay alive meanwhile (``RedisCounters.live``)."""
    if not holds and not spent:
        return
    owed = counters.pending_totals
    owed += [OwedTotal(counters.new_id(), name, 0, spent, " ".join(holds)) for name in names]
    throttled(log, logging.WARNING, "total_deferred", "storage.counters: Redis is down; %d budget settle(s) wait "
              "in this process until it is back", len(owed))


async def apply_one(counters: RedisCounters, owed: OwedTotal) -> int:
    """Apply one (once: see the module's doc); raises ``counters_unavailable`` when Redis is down."""
    if "|" in owed.life:  # a request's holds
        holds = owed.life.split()
        used, = await counters.run_settle_totals([owed.name], owed.spent, holds)
        counters.forget_total_holds([owed.name], holds)
        return 1 if used >= 0 else -1
    reply = await counters.link.run(OWED_TOTAL, [counters.key("total", owed.name), counters.prefix + "life",
                                                 counters.key("total-owed", owed.name)],
                                    [owed.held, owed.spent, owed.life, owed.id])
    return int(reply)


async def push(counters: RedisCounters) -> None:
    """Send the budget settles that waited for Redis (oldest first; the caller holds the book's
    ``pushing`` lock). Raises ``counters_unavailable`` when Redis stops answering."""
    owed = counters.pending_totals
    while owed:
        await apply_one(counters, owed[0])
        owed.pop(0)


async def keep(tx, owed: list[OwedTotal]) -> None:
    """Store these (a stop's transaction, ``redis_owed.keep``)."""
    now = time.time()
    await tx.run_steps([(f"insert into {TABLE} ({', '.join(COLUMNS)}) values ({', '.join('?' for _ in COLUMNS)}) "
                         "on conflict (id) do nothing", [(*o, now) for o in owed], True)])


async def apply(counters: RedisCounters, store) -> int:
    """Apply what stops kept and delete it; how many rows. Raises ``counters_unavailable``
    when Redis stops answering (what was applied stays applied: its id is in the set)."""
    rows = await store.fetchall(f"select {', '.join(COLUMNS[:-1])} from {TABLE} order by created_at, id")
    done: list[str] = []
    try:
        for row in rows:
            await apply_one(counters, OwedTotal(row[0], row[1], int(row[2]), int(row[3]), row[4] or ""))
            done.append(row[0])
    finally:
        if done:
            async with store.transaction() as tx:
                await tx.execute(f"delete from {TABLE} where id in ({', '.join('?' for _ in done)})", done)
    return len(done)
