"""A charge a stop kept for Redis, that Redis ran after all, is taken from Redis once however late.

Redis slow, not gone: the charge's script reaches it after the timeout, so the stop keeps the
charge in the store (``plugins/accounts/redis_owed.py``), and Redis runs it meanwhile (its done
marker set, its row in the ledger stream). The next instance applying the owed row finds the
marker and leaves the amount out. The marker was kept 600 s from the script: the owed row
applied later than that (the fleet down ten minutes) took the charge from Redis's balance a
second time. Now the marker lives until a writer has stored the stream's entry (then 600 s
more, for a retried script), and the writer that stores it resolves the owed row in the same
transaction (a row lock orders it with the apply), so no window of time decides it. The test
ages every key of Redis by 600 s (each TTL shortened by 600 s, those under it expired), which is
what ten minutes without an instance do to them.
"""

from __future__ import annotations

import pytest
from fleet import until
from test_redis_owed import OPENING, PREFIX, fleet  # noqa: F401  (the fixture)

pytestmark = pytest.mark.fleet

AGE_MS = 600_000


async def age(redis) -> None:
    """Ten minutes pass for Redis's keys with a time to live."""
    async for name in redis.scan_iter(match=f"{PREFIX}*"):
        ttl = await redis.pttl(name)
        if ttl > 0:
            if ttl <= AGE_MS:
                await redis.delete(name)
            else:
                await redis.pexpire(name, ttl - AGE_MS)


async def test_a_kept_charge_redis_ran_is_not_taken_twice_when_applied_ten_minutes_later(fleet):  # noqa: F811
    told = await fleet.charge_redis_runs_late()
    await age(fleet.redis)  # the fleet stays down ten minutes
    await fleet.start()
    await until(fleet.applied, 60, "the owed row looked at")

    async def stream_stored() -> bool:
        return await fleet.redis.xlen(f"{PREFIX}ledger") == 0

    await until(stream_stored, 60, "the stream's entry stored")
    assert await fleet.stored() == (1, told, OPENING - told, 0)
    assert await fleet.redis_balance() == OPENING - told


