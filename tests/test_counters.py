"""The counters contract (plugins/accounts/counters.py), case by case, on every kind of counters.

The same cases run on ``memory`` and on Redis (``counters_of`` in ``fleet.py``
gives each test its own Redis key prefix), so a plugin written against the
interface behaves the same on one process and on a fleet.
"""

from __future__ import annotations

import pytest
from fleet import COUNTER_KINDS, counters_of

from plugins.accounts.gcra import Rule


def rule(name: str, limit: int, period: float = 60.0, tokens: bool = False) -> Rule:
    return Rule(tokens=tokens, label=name, scope="", limit=limit, period=period, interval=period / limit,
                state=("k", "", name), limit_text=str(limit))


@pytest.fixture(params=COUNTER_KINDS)
async def counters(request):
    async with counters_of(request.param) as c:
        yield c


async def test_take_is_all_or_none_and_says_which_rule_and_how_long(counters):
    rpm, tpm = rule("rpm", 3), rule("tpm", 100, tokens=True)
    now = 1_000_000.0
    for _ in range(3):
        assert await counters.take((rpm, tpm), 10, now) is None
    refused = await counters.take((rpm, tpm), 10, now)
    assert refused is not None and refused.rule == rpm
    assert refused.wait == pytest.approx(20.0)  # one request every 20 s
    # The refusal took nothing: the tokens rule still has 70 left.
    assert await counters.take((tpm,), 70, now) is None
    assert (await counters.take((tpm,), 1, now)).rule == tpm


async def test_a_tokens_rule_is_corrected_by_the_real_usage(counters):
    tpm = rule("tpm", 100, tokens=True)
    now = 1_000_000.0
    assert await counters.take((tpm,), 90, now) is None
    counters.adjust((tpm,), -80)  # used 10, not 90
    await counters.settled()
    assert await counters.take((tpm,), 90, now) is None
    assert await counters.take((tpm,), 1, now) is not None


async def test_concurrency_counts_what_is_in_flight(counters):
    assert await counters.enter("key-a", 2)
    assert await counters.enter("key-a", 2)
    assert not await counters.enter("key-a", 2)
    assert await counters.enter("key-b", 2)  # scopes are separate
    counters.leave("key-a")
    await counters.settled()
    assert await counters.enter("key-a", 2)
    assert not await counters.enter("key-a", 2)


async def test_capped_totals_hold_settle_release(counters):
    assert await counters.hold_total("budget:a:2026-12", 100, 60, seed=10)
    assert not await counters.hold_total("budget:a:2026-12", 100, 31)  # 10 used + 60 held + 31 > 100
    counters.settle_total("budget:a:2026-12", 60, 50)
    await counters.settled()
    assert counters.used_total("budget:a:2026-12") == 60
    assert await counters.hold_total("budget:a:2026-12", 100, 40)
    counters.release_total("budget:a:2026-12", 40)
    await counters.settled()
    assert await counters.hold_total("budget:a:2026-12", 100, 40)
    assert not await counters.hold_total("budget:a:2026-12", 100, 1)
