"""``storage.on_counters_down: local``: while Redis is down, each instance enforces limits alone.

With the default ``refuse``, a request that needs the shared counters while
Redis cannot be reached is answered 503 ``counters_unavailable``. With
``local``, the rate limits (rpm, tpm, rpd, per model, an account's shared
limits) and ``concurrency`` of keys are enforced by each instance in its own
memory at ``limit / instances`` (a concurrency of at least 1), where
``instances`` is how many instances the counters last saw (each one beats
into the sorted set ``<prefix>instances`` every ``hold_ttl / 3``; a member
expires after ``hold_ttl``), at least 1. So a fleet that loses Redis admits
about what it admitted with it, not ``limit x instances``.

What is never decided locally: credit (a metered key's hold goes through
Redis: 503 ``counters_unavailable``, money is never spent blind) and budgets
(capped totals: the same 503). One log line when an outage starts (with the
divisor) and one when Redis answers again; then the shared limits apply again
at once, without a restart. What the instances admitted locally is not
carried into Redis: an outage can add at most one window of each limit.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from proxy import ProxyError

from .claims import Admission, Claim, CreditClaim, RateClaim, SlotClaim, TotalClaim
from .counters import MemoryCounters, Refusal, take_local, unavailable
from .redis_counters import RedisCounters
from .redis_link import RedisLink

if TYPE_CHECKING:
    from .gcra import Rule, Tat

log = logging.getLogger("tollway.counters")

# Drop members whose beat expired, beat for this instance, count who is left
# (expiry on Redis's clock, as holds are).
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
"""


class LocalWhenDownCounters(RedisCounters):
    """Redis counters that fall back to per-instance limits (``limit / instances``) while down."""

    def __init__(self, link: RedisLink) -> None:
        super().__init__(link)
        self.seen = 1  # instances the counters last saw, this one included
        self.local = MemoryCounters()  # the limits while Redis is down (emptied when it is back)
        self.local_slots: dict[str, int] = {}  # scope -> concurrency slots taken locally, still in flight
        link.down_note = self._down_note
        link.up_note = "limits are shared again"
        link.on_up.append(self._back)

    def instances(self) -> int:
        return self.seen

    def _down_note(self) -> str:
        return (f"on_counters_down: local: unmetered keys' limits are enforced by each instance at limit / "
                f"{self.seen} ({self.seen} instance(s) seen) until it answers; metered requests and budgets "
                "are refused (503 counters_unavailable)")

    def _back(self) -> None:
        self.local.tats.clear()  # shared limits again; local slots still in flight are left locally

    def start(self) -> None:
        super().start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._beat(), name="tollway-redis-beat"))

    async def _beat(self) -> None:
        key = self.prefix + "instances"
        while True:
            if not self.link.down:
                try:
                    self.seen = max(1, int(await self.link.run(BEAT, [key], [self.instance, self.ttl_ms])))
                except Exception:  # the link marked itself down (and logged it)
                    pass
            await asyncio.sleep(self.ttl_ms / 3000)

    # -- a whole admission (claims.py) ----------------------------------------------------------
    async def admit(self, admission: Admission) -> None:
        if not self.link.down:
            try:
                await super().admit(admission)
                return
            except ProxyError:
                if not self.link.down:
                    raise
        if any(isinstance(c, TotalClaim) or (isinstance(c, CreditClaim) and c.shared) for c in admission.claims):
            raise unavailable()  # money (credit, budgets) is never decided locally
        share = self.seen
        local = Admission()
        original: dict[int, Claim] = {}
        for claim in admission.claims:
            mine: Claim = claim  # an unmetered account's credit: nothing to hold
            if isinstance(claim, RateClaim):
                mine = RateClaim(tuple(replace(rule, interval=rule.interval * share) for rule in claim.rules),
                                 claim.tokens, claim.now)
            elif isinstance(claim, SlotClaim):
                mine = SlotClaim(claim.scope, max(1, claim.limit // share))
            original[id(local.add(mine))] = claim
        await self.local.admit(local)
        refused = local.refused
        if refused is not None:
            claim = original[id(refused)]
            if isinstance(claim, RateClaim) and isinstance(refused, RateClaim) and refused.refusal is not None:
                claim.refusal = Refusal(claim.rules[refused.rules.index(refused.refusal.rule)], refused.refusal.wait)
            admission.refused = claim
            return
        for claim in admission.claims:
            if isinstance(claim, SlotClaim):
                self.local_slots[claim.scope] = self.local_slots.get(claim.scope, 0) + 1

    # -- rate limits ----------------------------------------------------------------------------
    async def take(self, rules: tuple[Rule, ...], tokens: int, now: float) -> Refusal | None:
        if not self.link.down:
            try:
                return await super().take(rules, tokens, now)
            except ProxyError:
                if not self.link.down:  # refused for another reason (every connection busy)
                    raise
        share = self.seen
        scaled = tuple(replace(rule, interval=rule.interval * share) for rule in rules)
        refused = take_local(self.local.tats, scaled, tokens, now)
        if refused is None:
            return None
        return Refusal(rules[scaled.index(refused.rule)], refused.wait)

    def tat(self, state: tuple) -> Tat | None:
        if self.link.down:
            return self.local.tats.get(state)
        return super().tat(state)

    def adjust(self, rules: tuple[Rule, ...], tokens: int) -> None:
        if not self.link.down:
            super().adjust(rules, tokens)
            return
        tats, share = self.local.tats, self.seen
        for rule in rules:
            tat = tats.get(rule.state)
            if tat is not None:
                tats[rule.state] = (tat[0], tat[1] + tokens * rule.interval * share)

    # -- concurrency ----------------------------------------------------------------------------
    async def enter(self, scope: str, limit: int) -> bool:
        if not self.link.down:
            try:
                return await super().enter(scope, limit)
            except ProxyError:
                if not self.link.down:
                    raise
        if not await self.local.enter(scope, max(1, limit // self.seen)):
            return False
        self.local_slots[scope] = self.local_slots.get(scope, 0) + 1
        return True

    def leave(self, scope: str) -> None:
        n = self.local_slots.get(scope)
        if not n:
            super().leave(scope)
            return
        if n == 1:
            del self.local_slots[scope]
        else:
            self.local_slots[scope] = n - 1
        self.local.leave(scope)

    async def close(self) -> None:
        if not self.link.down:
            try:
                await self.link.call(lambda: self.link.redis.zrem(self.prefix + "instances", self.instance))
            except Exception:  # only tidiness: the member expires after hold_ttl
                pass
        await super().close()
