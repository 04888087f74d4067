"""The counters contract (plugins/accounts/counters.py), case by case, on every kind of counters.

The same cases run on ``memory`` and on Redis (``counters_of`` in ``fleet.py``
gives each test its own Redis key prefix), so a plugin written against the
interface behaves the same on one process and on a fleet.
"""

from __future__ import annotations

import time

import pytest
from fleet import COUNTER_KINDS, counters_of

from plugins.accounts.claims import Admission, CreditClaim, RateClaim, SlotClaim, TotalClaim
from plugins.accounts.gcra import Rule
from plugins.accounts.model import Account


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
    hold = await counters.hold_total("budget:a:2026-12", 100, 60, seed=10)
    assert hold
    assert not await counters.hold_total("budget:a:2026-12", 100, 31)  # 10 used + 60 held + 31 > 100
    counters.settle_totals(["budget:a:2026-12"], 60, 50, [hold])
    if counters.kind == "redis":  # a settle sent again (its reply lost) counts once
        counters.settle_totals(["budget:a:2026-12"], 60, 50, [hold])
    await counters.settled()
    assert counters.used_total("budget:a:2026-12") == 60
    hold = await counters.hold_total("budget:a:2026-12", 100, 40)
    assert hold
    counters.release_totals(["budget:a:2026-12"], 40, [hold])
    await counters.settled()
    assert await counters.hold_total("budget:a:2026-12", 100, 40)
    assert not await counters.hold_total("budget:a:2026-12", 100, 1)


async def test_admit_takes_every_claim_at_once_or_none_and_names_the_one_that_refused(counters):
    """A request's whole admission (claims.py): a concurrency slot, its rate limits, the
    credit hold and a budget, checked together; a refusal takes nothing."""
    shared = counters.kind == "redis"
    acc = Account("acme", 100)
    if shared:
        async def seed(account_id: str) -> tuple[int, int]:
            assert account_id == "acme"
            return 100, 0
        counters.seed_account = seed  # the account is not in Redis yet: read from the "store"
    rpm = rule("rpm", 2)
    now = 1_000_000.0

    async def admit(amount: int, slots: int = 5) -> tuple[Admission, SlotClaim, RateClaim, CreditClaim, TotalClaim]:
        admission = Admission()
        slot = admission.add(SlotClaim("key-a", slots))
        rate = admission.add(RateClaim((rpm,), 0, now))
        credit = admission.add(CreditClaim(acc, amount, shared=shared))
        total = admission.add(TotalClaim("budget:k:key-a:2026-12", 90, amount))
        await counters.admit(admission)
        return admission, slot, rate, credit, total

    admission, _, _, credit, _ = await admit(60)
    assert admission.refused is None and credit.hold and (credit.balance, credit.reserved) == (100, 60)
    # The credit cannot cover 60 more: refused there, and nothing else was taken...
    admission, _, rate, credit, _ = await admit(60)
    assert admission.refused is credit and rate.refusal is None
    assert (credit.balance, credit.reserved) == (100, 60) and not credit.hold
    # ...so the budget (90) has 30 left, not -30, and rpm 2 still admits one more.
    admission, _, _, _, total = await admit(31)
    assert admission.refused is total and counters.used_total("budget:k:key-a:2026-12") == 0
    admission, slot, _, _, _ = await admit(10, slots=1)
    assert admission.refused is slot  # one request in flight already
    admission, _, _, credit, _ = await admit(10)
    assert admission.refused is None and credit.reserved == 70
    admission, _, rate, _, _ = await admit(0)
    assert admission.refused is rate and rate.refusal.rule is rpm and rate.refusal.wait > 0
    for _ in range(2):
        counters.leave("key-a")
    await counters.settled()
    assert await counters.enter("key-a", 1)  # both slots were freed: the refused admissions took none


@pytest.mark.parametrize("now", [1_000_000.0, 1_800_000_000.123])
async def test_extreme_limits_admit_exactly_their_count_at_any_time(counters, now):
    """rpm 1e8 and tpm 1e10 at a Unix time of today: one request is 6e-7 s of the minute, a
    token 6e-9 s, both below what a float TAT of ~1.8e9 s resolves (2.4e-7 s). The counts are
    exact whatever the time (a TAT kept as an absolute float added nothing per token: the
    tokens limit admitted forever)."""
    tpm = rule("tpm", 10_000_000_000, tokens=True)
    assert await counters.take((tpm,), 10_000_000_000 - 1000, now) is None
    admitted = 0
    while admitted <= 2000 and await counters.take((tpm,), 1, now) is None:
        admitted += 1
    assert admitted == 1000
    refused = await counters.take((tpm,), 1, now)
    assert refused is not None and refused.wait == pytest.approx(tpm.interval)
    # A correction by the real usage gives back exactly what it says: 7 more tokens fit.
    counters.adjust((tpm,), -7)
    await counters.settled()
    assert await counters.take((tpm,), 7, now) is None
    assert await counters.take((tpm,), 1, now) is not None
    # Time refills exactly too: 2**-21 s later (a time a float of today holds) 79.47 tokens came back.
    later = now + 2 ** -21
    assert later - now == 2 ** -21 and int(2 ** -21 / tpm.interval) == 79
    assert await counters.take((tpm,), 79, later) is None
    assert await counters.take((tpm,), 1, later) is not None

    # On Redis a state lives its debt plus 1 s of Redis's REAL time (it is full again then), while
    # this test's time stands still: a stall of the test process past 1 s between two takes (a
    # loaded machine) lets the state go, which is right for a real clock. Such a run says nothing:
    # it is made again on a fresh state.
    for attempt in range(5):
        rpm = rule(f"rpm{attempt}", 100_000_000)
        longest, last = 0.0, time.monotonic()
        for _ in range(500):
            assert await counters.take((rpm,), 0, now) is None
            longest, last = max(longest, time.monotonic() - last), time.monotonic()
        if longest < 0.9:
            break
    # 500 requests took exactly 500 intervals: 3e-4 s to wait for a full minute again.
    assert counters.tat(rpm.state)[1] - (now - counters.tat(rpm.state)[0]) == pytest.approx(500 * rpm.interval,
                                                                                          rel=1e-9)
