"""The contract of a budget hold in Redis, on the counters themselves: a hold its instance no
longer keeps alive comes back after ``hold_ttl``, and its settle, however late and however
many times it is sent, counts its spend once (``redis_scripts.SETTLE_TOTALS``). The real
servers' side: ``tests/test_fleet_budget_holds.py``."""

from __future__ import annotations

import time

import pytest
from fleet import counters_of, until

pytestmark = pytest.mark.fleet

NAME = "budget:k:key-a:2026-12-04"


@pytest.fixture
async def counters():
    async with counters_of("redis", "&hold_ttl=1") as counters:
        yield counters


async def test_a_hold_nobody_keeps_alive_comes_back_and_its_late_settle_counts_once(counters):
    redis = counters.link.redis
    dead = await counters.hold_total(NAME, 100, 60, seed=10, until=time.time() + 600)  # (its keys expire)
    assert dead and not await counters.hold_total(NAME, 100, 31)  # 10 used + 60 held + 31 > 100
    counters.live.clear()  # its instance is gone: nobody refreshes it
    expiry = max(score for _, score in await redis.zrange(counters.prefix + "total-holds:" + NAME, 0, -1,
                                                          withscores=True))

    async def expired() -> bool:
        seconds, micros = await redis.time()
        return seconds * 1000 + micros // 1000 > expiry

    await until(expired, 10, "the hold's expiry, on Redis's clock")
    alive = await counters.hold_total(NAME, 100, 90)  # the dead hold is freed by this admission
    assert alive
    for _ in range(2):  # the late settle, and the same settle sent again (its reply lost)
        counters.settle_totals([NAME], 60, 50, [dead])
        await counters.settled()
    total = await redis.hgetall(counters.prefix + "total:" + NAME)
    assert (int(total[b"used"]), int(total[b"held"])) == (10 + 50, 90)
    counters.release_totals([NAME], 90, [alive])
    counters.release_totals([NAME], 90, [alive])
    await counters.settled()
    total = await redis.hgetall(counters.prefix + "total:" + NAME)
    assert (int(total[b"used"]), int(total[b"held"])) == (60, 0)
    assert not counters.live and not counters.total_meta  # nothing left to keep alive
