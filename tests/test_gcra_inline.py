"""``admit_local`` checks a rate claim with ``gcra_check``'s loop written inline (a Python frame
less a request): held here to ``gcra_check``'s answers, the refusal (the rule furthest over and
its wait, exactly) or the new TATs taken (exactly), on generated states: no TAT, a TAT in the
past (a debt below zero), debts either side of the period, equal waits (the first rule kept),
requests and tokens rules, and a rate claim beside a credit claim that refuses."""

from __future__ import annotations

import random

from plugins.accounts.claims import Admission, CreditClaim, RateClaim, admit_local
from plugins.accounts.gcra import EPS, Rule, gcra_check
from plugins.accounts.model import Account


def _rule(rng: random.Random, i: int) -> Rule:
    limit = rng.choice([1, 2, 3, 10, 60, 1000, 10**8])
    period = rng.choice([1.0, 60.0, 3600.0, 86400.0])
    return Rule(tokens=rng.random() < 0.4, label=f"r{i}", scope="", limit=limit, period=period,
                interval=period / limit, state=("k", "", f"f{i}"), limit_text=str(limit))


def test_admit_local_checks_a_rate_claim_as_gcra_check_does() -> None:
    rng = random.Random(3)
    refused = taken = 0
    for _ in range(20_000):
        rules = tuple(_rule(rng, i) for i in range(rng.randint(1, 4)))
        now = rng.choice([0.0, 1000.0, 1_800_000_000.5])
        tats: dict = {}
        for rule in rules:
            kind = rng.random()
            if kind < 0.2:
                continue  # no TAT yet
            at = now - rng.choice([0.0, rng.random() * rule.period, rule.period * 2])
            if kind < 0.5:  # near the period: either side of a refusal, by a hair or by EPS
                debt = rule.period - rng.choice([0.0, rule.interval, EPS, EPS / 2, -EPS]) + (now - at)
            else:
                debt = rng.random() * rule.period * 1.5
            tats[rule.state] = (at, debt)
        if rng.random() < 0.1 and len(rules) > 1:  # two rules the same wait over: the first is reported
            tats[rules[1].state] = tats.get(rules[0].state, (now, 0.0))
        tokens = rng.choice([0, 1, 7, 120, 10**6])
        expected_refusal, expected_tats = gcra_check(dict(tats), rules, tokens, now)
        before = dict(tats)
        admission = Admission()
        claim = RateClaim(rules, tokens, now)
        admission.claims.append(claim)
        admit_local(tats, {}, lambda c: [0, 0], admission)
        if expected_refusal is not None:
            refused += 1
            assert admission.refused is claim and claim.taken is None
            assert claim.refusal.rule is expected_refusal.rule and claim.refusal.wait == expected_refusal.wait
            assert tats == before  # nothing taken
        else:
            taken += 1
            assert admission.refused is None and claim.taken == expected_tats
            assert [tats[rule.state] for rule in rules] == expected_tats
    assert refused > 2000 and taken > 2000


def test_a_rate_claim_checked_before_a_refusal_takes_nothing() -> None:
    rule = Rule(tokens=False, label="rpm", scope="", limit=5, period=60.0, interval=12.0, state=("k", "", "rpm"),
                limit_text="5")
    account = Account(id="a", balance=10, reserved=0, spent=0)
    tats: dict = {}
    admission = Admission()
    rate = RateClaim((rule,), 1, 100.0)
    admission.claims.extend([rate, CreditClaim(account, 11, False)])
    admit_local(tats, {}, lambda c: [0, 0], admission)
    assert admission.refused is admission.claims[1] and rate.taken is None and tats == {}
