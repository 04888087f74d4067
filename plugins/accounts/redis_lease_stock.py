"""This instance's stock of leases (what a lease is: ``redis_leases.py``): the pools of credit and
the rate limits' units it holds, the ``LEASE`` sent behind that fills them, and what gives them
back (unused for ``IDLE_S``, at a clean stop; dropped when Redis loses its data)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import hiredis

from . import redis_scripts as lua
from .claims import Admission, CreditClaim, RateClaim
from .redis_lease_scripts import GIVE_BACK, LEASE

if TYPE_CHECKING:
    from .gcra import Rule
    from .redis_counters import RedisCounters

CREDIT_MAX = 64  # holds in a pool at most
CREDIT_MIN = 2  # no pool of fewer holds (each of HEADROOM worst cases)
CREDIT_SHARE = 16  # a pool is at most this fraction of what the account has free
HEADROOM = 2  # a pooled hold is this many times the worst case of the request that asked for the pool
RATE_SHARE = 50  # a rule's lease: this fraction of its limit...
RATE_ROOM = 8  # ...and at most this fraction of what the rule has free
RATE_MIN = 2  # no lease of fewer units (requests; a tokens rule: two estimates)
IDLE_S = 1.0  # an unused lease goes back after this long without use
RETRY_S = 1.0  # a lease Redis refused is not asked again for this long


@dataclass(slots=True, eq=False)
class Pool:
    """An account's leased credit: holds of ``amount`` each."""

    amount: int
    holds: list[str] = field(default_factory=list)
    granted: int = 0  # holds after the last grant (refilled below half of it)
    used: float = 0.0  # time.monotonic() of the last grant or use
    balance: int = 0  # bal and res as the last grant saw them (a claim's view)
    reserved: int = 0


@dataclass(slots=True, eq=False)
class RateLease:
    """A rule's leased units (requests, or tokens), taken at ``interval`` seconds each."""

    interval: float
    left: float = 0.0
    granted: float = 0.0
    used: float = 0.0


class LeaseStock:
    """This instance's leases, and the scripts that take and give them back."""

    def __init__(self, counters: RedisCounters) -> None:
        self.counters = counters
        self.pools: dict[str, Pool] = {}  # account id -> its pool
        self.rates: dict[tuple, RateLease] = {}  # rule state -> its lease
        self.pending: dict[object, asyncio.Future] = {}  # scope (account id, rule state) -> a LEASE on its way
        self.refused: dict[object, float] = {}  # scope -> time.monotonic() before which no LEASE is asked
        self._task: asyncio.Task | None = None
        self.life = 0  # counts Redis's lost lives (``lost``): a grant of an earlier one is ignored

    # -- taking leases --------------------------------------------------------------------------
    def lease(self, admission: Admission) -> None:
        """Send one ``LEASE`` behind for the scopes of ``admission`` that have less than half a
        lease left (all of them or none granted); not for a scope Redis refused in the last
        ``RETRY_S``, nor one with a lease on its way."""
        now = time.monotonic()
        pending, refused = self.pending, self.refused
        credit: CreditClaim | None = None
        rules: list[tuple[Rule, int]] = []
        at = 0.0  # the rules' clock: the request's (as ADMIT's)
        for claim in admission.claims:
            if type(claim) is CreditClaim:
                if claim.shared:  # type: ignore[union-attr]
                    credit = claim  # type: ignore[assignment]
            elif type(claim) is RateClaim:
                at = claim.now  # type: ignore[union-attr]
                for rule in claim.rules:  # type: ignore[union-attr]
                    rules.append((rule, claim.tokens if rule.tokens else 1))  # type: ignore[union-attr]
        scopes: list = []
        if credit is not None:
            aid = credit.account.id
            pool = self.pools.get(aid)
            if pending.get(aid) is not None or refused.get(aid, 0.0) > now:
                return
            if pool is not None and len(pool.holds) * 2 >= pool.granted and pool.amount >= credit.amount:
                credit = None
            else:
                scopes.append(aid)
        wanted: list[tuple[Rule, float, float]] = []
        for rule, need in rules:
            state = rule.state
            if pending.get(state) is not None or refused.get(state, 0.0) > now:
                return
            lease = self.rates.get(state)
            if lease is not None and lease.interval == rule.interval and lease.left * 2 >= lease.granted:
                continue
            n = rule.limit / RATE_SHARE
            fewest = max(RATE_MIN, 2 * need)
            if n < fewest:
                return  # a rule too small to lease: this admission is never covered
            wanted.append((rule, n, fewest))
            scopes.append(state)
        if not scopes:
            return
        counters = self.counters
        keys: list[str] = []
        args: list = [counters.ttl_ms, repr(at), 0, 0, CREDIT_MIN, CREDIT_SHARE]
        members: list[str] = []
        amount = 0
        if credit is not None:
            pool = self.pools.get(credit.account.id)
            amount = max(credit.amount * HEADROOM, pool.amount if pool is not None else 0, 1)
            members = [f"{counters.new_id()}|{amount}" for _ in range(CREDIT_MAX)]
            keys += counters.account_keys(credit.account.id)
            args[2:4] = [CREDIT_MAX, amount]
            args += members
        args.append(len(wanted))
        for rule, n, fewest in wanted:
            keys.append(counters.tat_key(rule.state))
            args += [repr(rule.interval), repr(rule.period), repr(n), repr(fewest), RATE_ROOM]
        sent = counters.link.send(LEASE, keys, args)
        if sent is None:
            return  # (no pipe, or Redis down: no lease; the exact path decides)
        for scope in scopes:
            pending[scope] = sent
        grant = (scopes, credit, amount, members, wanted, self.life)
        sent.add_done_callback(lambda done: self._answered(done, keys, args, grant))

    def _answered(self, done: asyncio.Future, keys: list[str], args: list, grant: tuple) -> None:
        reply = None if done.cancelled() or done.exception() is not None else done.result()
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # Not loaded on this Redis yet: again the awaited way (which loads it), behind.
            again = asyncio.ensure_future(self._again(keys, args, grant))
            for scope in grant[0]:
                self.pending[scope] = again
            return
        self._granted(done, reply, *grant)

    async def _again(self, keys: list[str], args: list, grant: tuple) -> None:
        try:
            reply = await self.counters.link.run(LEASE, keys, args)
        except Exception:
            reply = None
        self._granted(asyncio.current_task(), reply, *grant)

    def _granted(self, done: object, reply: object, scopes: list, credit: CreditClaim | None, amount: int,
                 members: list[str], wanted: list[tuple[Rule, float, float]], life: int) -> None:
        pending = self.pending
        for scope in scopes:
            if pending.get(scope) is done:
                del pending[scope]
        if life != self.life:
            return  # granted in a Redis life since lost: those holds and units are gone with it
        now = time.monotonic()
        if not isinstance(reply, list) or reply[0] != 1:
            for scope in scopes:
                self.refused[scope] = now + RETRY_S
            if len(self.refused) > 65536:
                self.refused = {s: t for s, t in self.refused.items() if t > now}
            return
        counters = self.counters
        if credit is not None:
            aid = credit.account.id
            granted = members[:int(reply[3])]
            pool = self.pools.get(aid)
            if pool is None or pool.amount != amount:
                if pool is not None:
                    self._give_back_pool(aid)
                pool = self.pools[aid] = Pool(amount)
            pool.holds += granted
            pool.granted = len(pool.holds)
            pool.used = now
            pool.balance, pool.reserved = int(reply[1]), int(reply[2])
            counters.live.setdefault(counters.account_keys(aid)[1], set()).update(granted)
        for i, (rule, _n, _fewest) in enumerate(wanted):
            units, state = float(reply[4 + 2 * i]), reply[5 + 2 * i]
            lease = self.rates.get(rule.state)
            if lease is None or lease.interval != rule.interval:
                if lease is not None:
                    self._give_back_rate(rule.state)
                lease = self.rates[rule.state] = RateLease(rule.interval)
            lease.left += units
            lease.granted = lease.left
            lease.used = now
            counters.tats[rule.state] = lua.tat_of_text(state)

    # -- giving back ----------------------------------------------------------------------------
    def _give_back_pool(self, account_id: str) -> None:
        pool = self.pools.pop(account_id, None)
        if pool is None or not pool.holds:
            return
        counters = self.counters
        keys = counters.account_keys(account_id)
        for member in pool.holds:
            counters.forget_live(keys[1], member)
        counters.send_behind(GIVE_BACK, list(keys), pool.holds)

    def _give_back_rate(self, state: tuple) -> None:
        lease = self.rates.pop(state, None)
        if lease is None or lease.left <= 0:
            return
        shift = -lease.left * lease.interval
        counters = self.counters
        tat = counters.tats.get(state)
        if tat is not None:
            counters.tats[state] = (tat[0], tat[1] + shift)
        counters.send_behind(lua.ADJUST, [counters.tat_key(state)], [repr(shift)])

    def give_back_idle(self, idle_s: float = IDLE_S) -> None:
        """Give back every lease unused for ``idle_s`` (0: all of them, at a clean stop)."""
        cutoff = time.monotonic() - idle_s
        for aid in [aid for aid, pool in self.pools.items() if pool.used <= cutoff]:
            self._give_back_pool(aid)
        for state in [state for state, lease in self.rates.items() if lease.used <= cutoff]:
            self._give_back_rate(state)

    def lost(self) -> None:
        """Redis lost its data: what was leased went with it (the holds of requests in flight,
        taken from a pool, are theirs and are put back with the others: ``redis_restore.py``)."""
        self.life += 1
        counters = self.counters
        for aid, pool in self.pools.items():
            zkey = counters.account_keys(aid)[1]
            for member in pool.holds:
                counters.forget_live(zkey, member)
        self.pools.clear()
        self.rates.clear()
        self.pending.clear()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._idle(), name="tollway-redis-leases")

    async def _idle(self) -> None:
        while True:
            await asyncio.sleep(IDLE_S / 4)
            if not self.counters.link.down and (self.pools or self.rates):
                self.give_back_idle()

    async def close(self) -> None:
        """A clean stop: every unused lease goes back (the caller then waits for what was sent)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if not self.counters.link.down:
            self.give_back_idle(-1.0)
