"""The Redis side of a request's admission (``claims.py``): its claims, encoded for ONE
``ADMIT`` script (``redis_scripts.py``), and what the script answered, absorbed into this
instance's view (TATs for the headers, totals, the slots and holds it keeps alive)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import redis_scripts as lua
from .claims import LOCAL_HOLD, Admission, Claim, CreditClaim, RateClaim, SlotClaim, TotalClaim
from .gcra import Refusal, Rule

if TYPE_CHECKING:
    from .redis_counters import RedisCounters


async def admit_in_redis(counters: RedisCounters, admission: Admission) -> None:
    """Every claim of ``admission`` in ONE script (``ADMIT``): one round trip for the whole
    admission; ``admission.refused`` is then the claim that did not fit, or None."""
    keys: list[str] = []
    args: list = [counters.ttl_ms, 0]
    local: list[CreditClaim] = []  # unmetered accounts: nothing to hold, in Redis or here
    sent: list = []  # the claims in the script, and what each needs once it answered
    seeds: dict[int, int] = {}  # claim index in the script -> where its seed goes in args
    hold_id = ""  # the id of what this admission holds of budgets' totals (one for all of them)
    for claim in admission.claims:
        if isinstance(claim, SlotClaim):
            slot = counters.new_id()
            keys.append(counters.key("cc", claim.scope))
            args += ["S", claim.limit, slot]
            sent.append((claim, slot))
        elif isinstance(claim, RateClaim):
            rule_keys, rule_args = _encoded(counters, claim.rules)
            keys += rule_keys
            args += ["R", repr(claim.now), claim.tokens, len(claim.rules)]
            args += rule_args
            sent.append((claim, None))
        elif isinstance(claim, TotalClaim):
            keys += counters.total_keys(claim.name)
            seeds[len(sent)] = len(args) + 3
            member = ""
            if claim.amount:
                hold_id = hold_id or counters.new_id()
                member = f"{hold_id}|{claim.amount}"
            args += ["T", claim.cap, claim.amount, "" if claim.fresh is not None else claim.seed, repr(claim.until),
                     member]
            sent.append((claim, member))
        elif claim.shared:
            member = f"{counters.new_id()}|{claim.amount}"
            keys += counters.account_keys(claim.account.id)
            seeds[len(sent)] = len(args) + 1
            args += ["C", "", "", claim.amount, member]
            sent.append((claim, member))
        else:
            local.append(claim)
    for claim in local:
        if not claim.account.unlimited:
            raise AssertionError("a metered account's credit is held in Redis with shared counters")
    args[1] = len(sent)
    if not sent:  # nothing for Redis to decide (an unmetered key): no round trip
        for claim in local:
            claim.hold = LOCAL_HOLD
        return
    status, index, results = await counters.link.run(lua.ADMIT, keys, args)
    for _ in sent:
        if status != -1:
            break
        # Redis does not have an account (or a total) yet: seed it from the store, once.
        claim = sent[index - 1][0]
        at = seeds[index - 1]
        if isinstance(claim, CreditClaim):
            args[at:at + 2] = await counters.seed_account(claim.account.id)
        elif isinstance(claim, TotalClaim) and claim.fresh is not None:
            args[at] = await claim.fresh()
        status, index, results = await counters.link.run(lua.ADMIT, keys, args)
    if status == -1:
        raise AssertionError("ADMIT asked again for a seed it was given")
    for (claim, extra), result in zip(sent, results, strict=False):
        _absorb(counters, claim, extra, result, status == 1)
    if status == 1:
        for claim in local:
            claim.hold = LOCAL_HOLD
        return
    admission.refused = sent[index - 1][0]


def _encoded(counters: RedisCounters, rules: tuple[Rule, ...]) -> tuple[list[str], list[str]]:
    """(TAT keys, script arguments) of a key's rules: the same on every request until the key
    changes (its ``Plan`` is compiled once per key version), so made once per rules tuple."""
    cached = counters.encoded.get(id(rules))
    if cached is not None and cached[0] is rules:
        return cached[1], cached[2]
    keys = [counters.tat_key(rule.state) for rule in rules]
    args: list[str] = []
    for rule in rules:
        args += [repr(rule.interval), repr(rule.period), "1" if rule.tokens else "0"]
    if len(counters.encoded) >= 4096:
        counters.encoded.clear()
    counters.encoded[id(rules)] = (rules, keys, args)  # (the tuple kept: its id is not reused meanwhile)
    return keys, args


def _absorb(counters: RedisCounters, claim: Claim, extra: str | None, result: list, taken: bool) -> None:
    """What the script said of one claim: this instance's view, and what it keeps alive."""
    if isinstance(claim, RateClaim):
        tats = counters.tats
        for rule, tat in zip(claim.rules, result[2:], strict=True):
            if tat:
                tats[rule.state] = lua.tat_of_text(tat)
            else:
                tats.pop(rule.state, None)
        if result[0] != b"0":
            claim.refusal = Refusal(claim.rules[int(result[0]) - 1], float(result[1]))
    elif isinstance(claim, TotalClaim):
        counters.totals[claim.name] = int(result[0])
        if taken and extra:
            claim.hold = extra
            counters.keep_total_hold(claim, extra)
    elif isinstance(claim, SlotClaim):
        if taken:
            assert extra is not None
            counters.slots.setdefault(claim.scope, []).append(extra)
            counters.live.setdefault(counters.key("cc", claim.scope), set()).add(extra)
    elif result:
        claim.balance, claim.reserved = int(result[0]), int(result[1])
        if taken:
            assert extra is not None
            claim.hold = extra
            counters.live.setdefault(counters.account_keys(claim.account.id)[1], set()).add(extra)
