"""``gcra.put_headers`` writes exactly what its definition of 2026-12-04 wrote (names, values,
order), whatever it keeps between calls: the definition is copied here (``_reference``, with its
``Plan`` as ``_RefPlan``) and both are run side by side on the same sequence of calls, a plan
living through hundreds of answers as a key's does.

The states are the ones that decide a header: rule debts on and a float's step either side of
each ``remaining`` step (``k`` intervals, ``limit - k`` intervals), of each millisecond and second
of the reset texts, zero, the full period and past it; limits from 1 to ``MAX_LIMIT``; bursts
(a key admitted many times within a microsecond), idle keys, refusals (headers read off the
counters), shared counters (``tat_of``), times either side of a second (``X-RateLimit-Reset``)
and answers that already hold some of the headers."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from itertools import pairwise
from operator import itemgetter

from plugins.accounts.claims import Admission, RateClaim, admit_local
from plugins.accounts.counters import MemoryCounters
from plugins.accounts.gcra import _ISO_CACHE, _MS_TEXT, EPS, Rule, duration, iso_at
from plugins.accounts.limit_headers import HEADER_NAMES, LIMIT, REMAINING, RESET, Plan, put_headers
from plugins.accounts.model import MAX_LIMIT

# -- the reference: gcra.py's Plan and put_headers as they were (ninth pass) ---------------------------------


@dataclass(frozen=True, slots=True)
class _RefPlan:
    rules: tuple[Rule, ...]
    token_rules: tuple[Rule, ...]
    groups: tuple
    memo: list = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(cls, rules: list[Rule]) -> _RefPlan:
        kinds: dict[bool, list[tuple[Rule, int]]] = {}
        for i, rule in enumerate(rules):
            kinds.setdefault(rule.tokens, []).append((rule, i))
        generic = False not in kinds
        groups = tuple((HEADER_NAMES[k], tuple(kinds[k]), k == generic) for k in kinds)
        return cls(tuple(rules), tuple(r for r, _ in kinds.get(True, ())), groups)


_NO_BEST = (None, 0, 0.0, math.inf)
_DEBT = itemgetter(1)


def _reference(out: dict, plan: _RefPlan, tat_of, now: float, taken=None) -> None:
    if taken is not None:
        debts = tuple(map(_DEBT, taken))
        memo = plan.memo
        if memo and memo[0] == debts:
            out.update(memo[1])
            reset = memo[2]
            if reset is not None:
                at = now + reset
                out[RESET] = _ISO_CACHE.get(math.ceil(at)) or iso_at(at)
            return
    texts: dict[str, str] = {}
    shown = None
    for (limit_name, left_name, reset_name), group, generic in plan.groups:
        best, b_left, b_reset, b_frac = _NO_BEST
        for rule, i in group:
            if taken is not None:
                reset = taken[i][1]
            else:
                tat = tat_of(rule.state)
                reset = 0.0
                if tat is not None:
                    reset = tat[1] - (now - tat[0])
                    if reset < 0.0:
                        reset = 0.0
            left = int((rule.period - reset + EPS) / rule.interval)
            if left < 0:
                left = 0
            frac = left / rule.limit
            if frac < b_frac or (frac == b_frac and reset > b_reset):
                best, b_left, b_reset, b_frac = rule, left, reset, frac
        left_text = str(b_left)
        texts[limit_name] = best.limit_text
        texts[left_name] = left_text
        texts[reset_name] = _MS_TEXT[math.ceil(b_reset * 1000)] if b_reset < 1.0 else duration(b_reset)
        if generic:
            shown = best, left_text, b_reset
    generic_reset = None
    if shown is not None:
        texts[LIMIT] = shown[0].limit_text
        texts[REMAINING] = shown[1]
        generic_reset = shown[2]
    out.update(texts)
    if generic_reset is not None:
        at = now + generic_reset
        out[RESET] = _ISO_CACHE.get(math.ceil(at)) or iso_at(at)
    if taken is not None:
        plan.memo[:] = (debts, texts, generic_reset)


# -- generated plans and states ------------------------------------------------------------------------------

LIMITS = (1, 2, 3, 7, 60, 100, 1000, 86400, 10**6, 10**8, 10**9, 10**10, 10**11, MAX_LIMIT)
PERIODS = {"rpm": 60.0, "rpd": 86400.0, "tpm": 60.0}


def _limit(rng: random.Random) -> int:
    return rng.choice(LIMITS) if rng.random() < 0.8 else rng.randrange(1, MAX_LIMIT + 1)


def _rules(rng: random.Random) -> list[Rule]:
    """A key's plan as ``ratelimit._plan_of`` compiles it: per scope (the key, a model, the
    account) its rpm, rpd, tpm in that order, some left out; now and then an odd period."""
    rules = []
    for owner, scope in (("k", ""), ("k", "m"), ("acct:a", "")):
        if rules and rng.random() < 0.5:
            continue
        for name in ("rpm", "rpd", "tpm"):
            if rng.random() < 0.35:
                continue
            period = PERIODS[name] if rng.random() < 0.9 else rng.choice((1.0, 3600.0, 7.5))
            limit = _limit(rng)
            rules.append(Rule(tokens=name == "tpm", label=f"{name} {scope}", scope=scope, limit=limit,
                              period=period, interval=period / limit, state=(owner, scope, name),
                              limit_text=str(limit)))
    if not rules:
        rules.append(Rule(tokens=False, label="rpm", scope="", limit=1, period=60.0, interval=60.0,
                          state=("k", "", "rpm"), limit_text="1"))
    return rules


def _near(x: float, rng: random.Random) -> float:
    """``x``, or a float or two either side of it."""
    for _ in range(rng.choice((0, 0, 1, 2))):
        x = math.nextafter(x, math.inf if rng.random() < 0.5 else -math.inf)
    return x


def _debt(rule: Rule, rng: random.Random) -> float:
    """A debt after a take: where the headers' texts change, or anywhere up to just past the period."""
    pick = rng.random()
    limit, interval, period = rule.limit, rule.interval, rule.period
    if pick < 0.25:  # a step of ``remaining`` near full, or near empty
        k = rng.choice((1, 2, 3, rng.randrange(1, 100)))
        x = k * interval if rng.random() < 0.6 else max(limit - k, 0) * interval
    elif pick < 0.4:  # a millisecond step of the reset text
        x = rng.randrange(0, 1001) / 1000
    elif pick < 0.5:  # a second step (duration() takes EPS off)
        x = rng.randrange(1, int(period) + 2) + rng.choice((0.0, EPS, -EPS))
    elif pick < 0.6:
        x = rng.choice((period, period + interval, interval, 2 * interval, period - interval, 0.0))
    elif pick < 0.8:
        x = rng.random() * min(period, rng.choice((1e-3, 1.0, period)))
    else:
        x = rng.random() * period * 1.01
    return max(_near(x, rng), 0.0)


def _now(rng: random.Random) -> float:
    """A unix time; now and then a second's edge."""
    second = 1.8e9 + rng.randrange(0, 10**6)
    return _near(second, rng) if rng.random() < 0.3 else second + rng.random()


def _both(rules: list[Rule], new_plan: Plan, ref_plan: _RefPlan, tat_of, now: float, taken, rng) -> None:
    new: dict = {}
    old: dict = {}
    if rng.random() < 0.2:
        new["x-tollway-request-id"] = old["x-tollway-request-id"] = "r1"
        if rng.random() < 0.5:  # a header of ours already there: replaced where it is
            new[REMAINING] = old[REMAINING] = "stale"
    put_headers(new, new_plan, tat_of, now, taken)
    _reference(old, ref_plan, tat_of, now, taken)
    assert list(new.items()) == list(old.items()), (rules, taken, now)


def test_the_headers_of_taken_debts_are_the_reference_s() -> None:
    """A plan answers 200 admissions in a row, each with its rules' debts drawn where the
    texts change (and again: a state seen before), at times near and far apart."""
    rng = random.Random(28)
    for _ in range(400):
        rules = _rules(rng)
        new_plan, ref_plan = Plan.of(rules), _RefPlan.of(rules)
        seen: list[list] = []
        now = _now(rng)
        for _ in range(200):
            if seen and rng.random() < 0.3:
                taken = rng.choice(seen)
            elif seen and rng.random() < 0.3:  # one rule's debt moves, the others stay (a burst on one)
                taken = list(rng.choice(seen))
                i = rng.randrange(len(rules))
                taken[i] = (now, _debt(rules[i], rng))
            else:
                taken = [(now, _debt(rule, rng)) for rule in rules]
                seen.append(taken)
            now = now + rng.choice((0.0, 1e-7, 1e-4, 0.3, 1.0)) if rng.random() < 0.8 else _now(rng)
            _both(rules, new_plan, ref_plan, None, now, taken, rng)


def test_the_headers_of_admissions_are_the_reference_s() -> None:
    """Admissions in this process's memory, as a key sees them: bursts (time moving by less
    than a request's interval), a steady rate, idle spells, costs from 1 token to more than a
    limit (refused: the headers read the counters), on plans from 1 to ``MAX_LIMIT``."""
    rng = random.Random(29)
    refused = taken_n = 0
    for _ in range(300):
        rules = _rules(rng)
        new_plan, ref_plan = Plan.of(rules), _RefPlan.of(rules)
        counters = MemoryCounters()
        now = _now(rng)
        shortest = min(rule.interval for rule in rules)
        costs = (1, rng.choice((1, 40, 1000)), rng.choice((10**5, 10**9, MAX_LIMIT)))
        for _ in range(150):
            pick = rng.random()
            if pick < 0.4:
                now += rng.random() * shortest * rng.choice((0.0, 0.5, 2.0))
            elif pick < 0.8:
                now += rng.random() * rng.choice((1e-5, 1e-3, 0.1))
            elif pick < 0.95:
                now += rng.random() * rng.choice((1.0, 60.0, 86400.0))
            admission = Admission()
            cost = costs[2] if rng.random() < 0.1 else rng.choice(costs[:2])
            rate = admission.add(RateClaim(tuple(rules), cost, now))
            admit_local(counters.tats, counters.in_flight, counters._claimed_total, admission)
            if rate.taken is None:
                refused += 1
            else:
                taken_n += 1
            _both(rules, new_plan, ref_plan, counters.tats.get, now, rate.taken, rng)
    assert refused > 2000 and taken_n > 20000


def test_the_headers_read_off_the_counters_are_the_reference_s() -> None:
    """Without the admission's TATs (a refusal, shared counters): each rule's TAT read by
    ``tat_of`` at any age, none at all, or one long past."""
    rng = random.Random(30)
    for _ in range(300):
        rules = _rules(rng)
        new_plan, ref_plan = Plan.of(rules), _RefPlan.of(rules)
        tats: dict = {}
        for _ in range(60):
            now = _now(rng)
            for rule in rules:
                pick = rng.random()
                if pick < 0.15:
                    tats.pop(rule.state, None)
                elif pick < 0.9:
                    debt = _debt(rule, rng)
                    age = rng.choice((0.0, 0.0, rng.random() * 2, rng.random() * rule.period * 2))
                    tats[rule.state] = (now - age, debt + age)
            _both(rules, new_plan, ref_plan, tats.get, now, None, rng)
            if rng.random() < 0.5:  # an admission's headers in between (a state the plan keeps)
                taken = [(now, _debt(rule, rng)) for rule in rules]
                _both(rules, new_plan, ref_plan, tats.get, now, taken, rng)


def test_limits_steps_are_where_the_reference_puts_them() -> None:
    """Walking one rule's debt up through its ``remaining`` steps a float at a time around each
    step (and the reset texts' millisecond and second steps), the others fixed: the kept texts
    never outlive the step they were made for."""
    rng = random.Random(31)
    for _ in range(60):
        rules = _rules(rng)
        new_plan, ref_plan = Plan.of(rules), _RefPlan.of(rules)
        now = _now(rng)
        base = [(now, _debt(rule, rng)) for rule in rules]
        i = rng.randrange(len(rules))
        rule = rules[i]
        edges = sorted({max(_near(x, rng), 0.0) for x in (
            *(k * rule.interval for k in range(0, 6)), *(k / 1000 for k in range(0, 4)), 0.999, 1.0, 1.0 + EPS,
            2.0 - EPS, 2.0, 2.0 + EPS, rule.period - rule.interval, rule.period)})
        points = []
        for lo, hi in pairwise(edges):
            points += [lo, math.nextafter(lo, math.inf), (lo + hi) / 2, math.nextafter(hi, -math.inf)]
        for order in (points, points[::-1], rng.sample(points, len(points))):
            for x in order:
                taken = list(base)
                taken[i] = (now, x)
                _both(rules, new_plan, ref_plan, None, now, taken, rng)


def test_ties_are_broken_by_the_reset_as_the_reference_breaks_them() -> None:
    """Rules of a kind with the same fraction left (limits 10, 100 and 1000 times one another,
    each at the same fraction) show the one furthest from its reset: as their debts move
    within their steps, the rule shown changes, and so do the limit and reset texts."""
    rng = random.Random(32)
    for _ in range(200):
        base = rng.choice((1, 2, 3, 6, 10))
        period = rng.choice((60.0, 86400.0))
        rules = [Rule(tokens=False, label=f"rule {n}", scope="", limit=base * 10**n, period=period,
                      interval=period / (base * 10**n), state=("k", "", n), limit_text=str(base * 10**n))
                 for n in rng.sample(range(3), rng.choice((2, 3)))]
        if rng.random() < 0.5:
            rules.append(Rule(tokens=True, label="tpm", scope="", limit=1000, period=60.0, interval=0.06,
                              state=("k", "", "tpm"), limit_text="1000"))
        new_plan, ref_plan = Plan.of(rules), _RefPlan.of(rules)
        now = _now(rng)
        shared = rng.randrange(0, base + 1)  # what is left of the smallest limit, the others in proportion
        for _ in range(80):
            if rng.random() < 0.1:
                shared = rng.randrange(0, base + 1)
            taken = []
            for rule in rules:
                left = shared * rule.limit // base if not rule.tokens else rng.randrange(0, 1001)
                step = (rule.limit - left) * rule.interval  # the largest debt that leaves ``left``
                taken.append((now, max(step - rng.choice((0.0, rng.random() * 0.9)) * rule.interval, 0.0)))
            now += rng.random()
            _both(rules, new_plan, ref_plan, None, now, taken, rng)
