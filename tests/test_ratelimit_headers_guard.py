"""``put_headers``' plan-wide guard (``Plan.hold``: every group's held test at once, and
``X-RateLimit-Reset``'s second kept per plan) and its copy of the plan's texts for an answer that
holds only its request id write what the per-group way writes into the answer's dict: two plans of
the same rules answer the same admissions, one with its guard, the other with the guard dropped
before every answer (so each group runs its own test, and the slow path when it fails), over
generated debts where the texts change, repeated states, single-rule moves, times across second
edges and admissions in memory; each answer's headers equal, in order. And the guard is what
answers a share of them (over a tenth: the path is exercised, not bypassed)."""

from __future__ import annotations

import random
from types import SimpleNamespace

from test_ratelimit_headers_reference import _debt, _now, _rules

from plugins.accounts.claims import Admission, RateClaim, admit_local
from plugins.accounts.counters import MemoryCounters
from plugins.accounts.limit_headers import REMAINING, Plan, put_headers
from proxy.call import REQUEST_ID_HEADER


def _answer(guarded: Plan, grouped: Plan, tat_of, now: float, taken, rng: random.Random) -> bool:
    """Both plans' headers for one answer, compared; True when the guarded plan's guard held.
    The guarded plan writes as the rate limiter does (``response`` given: an answer holding only
    its request id gets a copy of the plan's texts), the other into the dict itself."""
    pick = rng.random()
    before: dict = {}
    if pick < 0.8:
        before[REQUEST_ID_HEADER] = f"r{rng.randrange(1000)}"  # the usual answer: its id alone
        if pick < 0.2:  # a header of ours already there: replaced where it is
            before[REMAINING] = "stale"
        elif pick < 0.3:
            before["x-other"] = "1"
    elif pick < 0.9:
        before["x-other"] = "1"  # no request id (a plugin took it out): none added
    response = SimpleNamespace(headers=dict(before))
    b = dict(before)
    guard = guarded.hold[0]
    held = guard is not None and all(lo <= (taken[i][1] if taken is not None else -1.0) <= hi
                                     for i, lo, hi in guard)
    grouped.hold[0] = None  # the per-group tests, every answer
    put_headers(response.headers, guarded, tat_of, now, taken, response)
    put_headers(b, grouped, tat_of, now, taken)
    assert list(response.headers.items()) == list(b.items()), (taken, now)
    assert list(b)[:len(before)] == list(before)  # what the answer had stays first, in its order
    assert (REQUEST_ID_HEADER in b) == (REQUEST_ID_HEADER in before)  # an id only where the answer had one
    return held


def test_the_guard_writes_what_each_group_writes() -> None:
    rng = random.Random(33)
    held = answers = 0
    for _ in range(300):
        rules = _rules(rng)
        guarded, grouped = Plan.of(rules), Plan.of(rules)
        seen: list[list] = []
        now = _now(rng)
        for _ in range(200):
            if seen and rng.random() < 0.5:
                taken = rng.choice(seen) if rng.random() < 0.6 else seen[-1]
            elif seen and rng.random() < 0.3:  # one rule's debt moves, the others stay
                taken = list(rng.choice(seen))
                i = rng.randrange(len(rules))
                taken[i] = (now, _debt(rules[i], rng))
            else:
                taken = [(now, _debt(rule, rng)) for rule in rules]
                seen.append(taken)
            now = now + rng.choice((0.0, 1e-7, 1e-4, 0.3, 1.0)) if rng.random() < 0.8 else _now(rng)
            held += _answer(guarded, grouped, None, now, taken, rng)
            answers += 1
    assert held > answers // 10, (held, answers)


def test_the_guard_on_admissions_in_memory() -> None:
    """A request at a time (every debt drained between answers: the guard's usual case) and
    bursts, refusals (the headers read the counters) in between."""
    rng = random.Random(34)
    held = answers = 0
    for _ in range(200):
        rules = _rules(rng)
        guarded, grouped = Plan.of(rules), Plan.of(rules)
        counters = MemoryCounters()
        now = _now(rng)
        longest = max(rule.period for rule in rules)
        for _ in range(100):
            now += rng.choice((longest * 1.01, longest * 1.01, rng.random() * 1e-3, rng.random()))
            admission = Admission()
            rate = admission.add(RateClaim(tuple(rules), rng.choice((1, 1, 40, 10**12)), now))
            admit_local(counters.tats, counters.in_flight, counters._claimed_total, admission)
            held += _answer(guarded, grouped, counters.tats.get, now, rate.taken, rng)
            answers += 1
    assert held > answers // 10, (held, answers)


def test_the_copy_is_for_the_cores_request_id() -> None:
    """The one header put_headers copies with its texts is the core's request id (else every
    answer would take the slower update)."""
    from plugins.accounts import limit_headers

    assert limit_headers.REQUEST_ID_HEADER == REQUEST_ID_HEADER
    assert str(limit_headers.REQUEST_ID_HEADER) == str(REQUEST_ID_HEADER)  # (the same case on the wire)
