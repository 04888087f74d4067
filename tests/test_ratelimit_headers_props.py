"""``gcra.put_headers`` (the rate-limit headers of every answer to a limited key) writes what the
definition it replaced wrote: the same names, values and order, on generated plans and states.

The old definition (groups found by index, ``enumerate``, the generic headers' group by
position) is copied here as it was."""

from __future__ import annotations

import random

from plugins.accounts.claims import Admission, RateClaim, SlotClaim, admit_local
from plugins.accounts.counters import MemoryCounters
from plugins.accounts.gcra import EPS, Rule, duration, iso_at
from plugins.accounts.limit_headers import HEADER_NAMES, LIMIT, REMAINING, RESET, Plan, put_headers


def _old_put_headers(out: dict, rules: list[Rule], tat_of, now: float) -> None:
    kinds: dict[bool, list[Rule]] = {}
    for rule in rules:
        kinds.setdefault(rule.tokens, []).append(rule)
    order = list(kinds)
    plan_main = order.index(False) if False in kinds else 0
    groups = tuple((HEADER_NAMES[k], tuple(kinds[k])) for k in order)
    main = None
    for i, (names, group) in enumerate(groups):
        best = None
        for rule in group:
            tat = tat_of(rule.state)
            reset = 0.0
            if tat is not None:
                reset = tat[1] - (now - tat[0])
                if reset < 0.0:
                    reset = 0.0
            left = int((rule.period - reset + EPS) / rule.interval)
            if left < 0:
                left = 0
            if best is None:
                best, b_left, b_reset, b_frac = rule, left, reset, left / rule.limit
            else:
                frac = left / rule.limit
                if frac < b_frac or (frac == b_frac and reset > b_reset):
                    best, b_left, b_reset, b_frac = rule, left, reset, frac
        left_text = str(b_left)
        out[names[0]] = best.limit_text
        out[names[1]] = left_text
        out[names[2]] = duration(b_reset)
        if i == plan_main:
            main = (best.limit_text, left_text, b_reset)
    if main is not None:
        out[LIMIT] = main[0]
        out[REMAINING] = main[1]
        out[RESET] = iso_at(now + main[2])


def _rules(rng: random.Random) -> list[Rule]:
    rules = []
    for i in range(rng.randrange(1, 5)):
        tokens = rng.random() < 0.4
        period = rng.choice((60.0, 86400.0, 1.0, 3600.0))
        limit = rng.choice((1, 2, 3, 10, 60, 100, 1000, 10**8, 10**10, 10**11))
        rules.append(Rule(tokens=tokens, label=f"rule {i}", scope="", limit=limit, period=period,
                          interval=period / limit, state=("k", "", i), limit_text=str(limit)))
    return rules


def test_put_headers_writes_what_it_wrote() -> None:
    rng = random.Random(12)
    for _ in range(20_000):
        rules = _rules(rng)
        now = 1.8e9 + rng.random() * 1e6
        tats = {}
        for rule in rules:
            pick = rng.random()
            if pick < 0.2:
                continue  # never taken
            if pick < 0.3:  # ties: two rules of a kind as full as each other
                tats[rule.state] = (now, 0.0)
                continue
            debt = rng.choice((rng.random() * rule.period, rule.period, rule.period * 2, rule.interval,
                               rng.random() * rule.interval * 5))
            tats[rule.state] = (now - rng.choice((0.0, rng.random() * 100)), debt)
        new: dict = {}
        old: dict = {}
        put_headers(new, Plan.of(rules), tats.get, now)
        _old_put_headers(old, rules, tats.get, now)
        assert list(new.items()) == list(old.items()), (rules, tats, now)


def test_headers_from_the_admission_are_the_counters_own() -> None:
    """An admission taken in memory hands the headers its rules' new TATs (``RateClaim.taken``)
    rather than their look-up: the headers are the old definition's, read back from the counters
    after the take. A refused admission (by a rule, or by another claim) takes nothing and hands
    nothing: the headers then read the counters as they were."""
    rng = random.Random(13)
    taken = refused = 0
    for _ in range(5_000):
        rules = _rules(rng)
        now = 1.8e9 + rng.random() * 1e6
        counters = MemoryCounters()
        for rule in rules:
            if rng.random() < 0.7:
                counters.tats[rule.state] = (now - rng.random() * 10, rng.random() * rule.period * 1.1)
        admission = Admission()
        slot = admission.add(SlotClaim("k", 0)) if rng.random() < 0.1 else None  # refuses: none in flight allowed
        rate = admission.add(RateClaim(tuple(rules), rng.choice((1, 40, 10**6)), now))
        admit_local(counters.tats, counters.in_flight, counters._claimed_total, admission)
        if admission.refused is None:
            taken += 1
            assert rate.taken == [counters.tats[rule.state] for rule in rules]
        else:
            refused += 1
            assert rate.taken is None and admission.refused in (slot, rate)
        new: dict = {}
        old: dict = {}
        put_headers(new, Plan.of(rules), counters.tats.get, now, rate.taken)
        _old_put_headers(old, rules, counters.tats.get, now)
        assert list(new.items()) == list(old.items()), (rules, counters.tats, now)
    assert taken > 1000 and refused > 500


def test_a_plan_reuses_its_last_headers_only_where_they_hold() -> None:
    """A plan keeps the texts of its last headers and what each rule computed from its debts
    (``limit_headers``: the brackets of debts each text holds for), and writes them again for
    the same debts (a key far from its limits asked the same cost, the usual answer). Over a
    run of admissions on one plan,
    its headers are the old definition's every time: repeated states (the memo's hits), new
    ones, refusals (headers read off the counters, the memo not used) and time moving on
    (``X-RateLimit-Reset``, the only text that depends on the time, is the time's own), on a
    ``out`` that already holds headers or not."""
    rng = random.Random(14)
    hits = 0
    for _ in range(400):
        rules = _rules(rng)
        plan = Plan.of(rules)
        counters = MemoryCounters()
        now = 1.8e9 + rng.random() * 1e6
        costs = (rng.choice((1, 40)), rng.choice((1, 40, 10**6)))
        before = None
        for _ in range(40):
            step = rng.random()
            if step < 0.5:  # long enough for every rule to be full again: the same debts as before
                now += max(rule.period for rule in rules) * (1 + rng.random())
            elif step < 0.8:
                now += rng.random() * 0.9 + rng.choice((0.0, 0.5))
            admission = Admission()
            rate = admission.add(RateClaim(tuple(rules), rng.choice(costs), now))
            admit_local(counters.tats, counters.in_flight, counters._claimed_total, admission)
            new: dict = {}
            old: dict = {}
            if rng.random() < 0.2:
                new["x-earlier"] = old["x-earlier"] = "1"
                if rng.random() < 0.5:  # a header of ours already there: replaced where it is
                    new[REMAINING] = old[REMAINING] = "stale"
            put_headers(new, plan, counters.tats.get, now, rate.taken)
            _old_put_headers(old, rules, counters.tats.get, now)
            assert list(new.items()) == list(old.items()), (rules, counters.tats, now)
            debts = tuple(t[1] for t in rate.taken) if rate.taken is not None else None
            hits += debts is not None and debts == before
            before = debts
    assert hits > 2000
