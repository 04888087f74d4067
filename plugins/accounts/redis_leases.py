"""Leases (``storage.counters: redis://...?leases=on``, the default): a request admitted from
this instance's memory, with no round trip to Redis, when slices taken from Redis beforehand
cover every claim of its admission.

A lease is what the exact ``ADMIT`` (``redis_admit.py``) would have taken, taken ahead, by one
script sent behind (``LEASE``; never awaited by a request):

- **credit**: a pool of ordinary credit holds of the account (members ``<hold id>|<amount>`` of
  ``holds:<account>``, counted in ``res``, kept alive with this instance's other holds every
  ``hold_ttl / 3``), each of one request's worst case. A request whose worst case is within a
  pooled hold takes it: from then on the hold is the request's own, settled by the same
  ``SETTLE`` as a hold ``ADMIT`` took (the charge and its row in one script, written before the
  answer's last bytes), released by the same ``RELEASE``. So every money guarantee of the exact
  path holds as it is: a charge never above ``bal - res``, a dead instance's pool expiring
  within ``hold_ttl``, the pool put back with the other holds if Redis loses its data. A pool
  is at most ``1/CREDIT_SHARE`` of what the account has free, and at least ``CREDIT_MIN`` holds
  (no lease otherwise: near the edge every request takes the exact path).
- **rate limits**: per rule (``gcra.Rule``, by its state), ``n`` units taken ahead by advancing
  the rule's TAT by ``n`` intervals in Redis (what ``n`` admissions would have done); a request
  takes 1 (a tokens rule: its estimate) from what is left. ``n`` is ``1/RATE_SHARE`` of the
  limit, at most ``1/RATE_ROOM`` of what the rule has free, and no lease below ``RATE_MIN``
  (``rpm: 30`` stays exact). Token corrections still go to Redis (``ADJUST``), as without leases.

Only admissions of credit and rate claims are leased: a concurrency slot or a budget's capped
total makes the whole admission exact. A request not covered (no lease yet, not enough left, a
bigger worst case than the pool's) waits for a lease on its way if there is one, else gives
back this instance's unused leases of its scopes (sent in the same write, before its ``ADMIT``)
and takes the exact path; a lease below half is refilled behind. Unused leases go back after
``IDLE_S`` without use, and at a clean stop. What stops being exact: ``docs/fleet.md``
("Leases").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import hiredis

from . import redis_scripts as lua
from .claims import LOCAL_HOLD, Admission, CreditClaim, RateClaim

if TYPE_CHECKING:
    from .gcra import Rule, Tat
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

# Take leases, all or none. KEYS: (the account, its holds, when ARGV[3] > 0), then one TAT key per
# rule. ARGV: ttl ms, now (the caller's clock, as ADMIT's), holds wanted (0: no credit part), each
# hold's amount, fewest holds, share of the free balance, the wanted holds' members, then the
# number of rules and per rule: interval, period, units wanted, fewest units, share of its room.
# Reply: {1, bal, res, holds granted, per rule: units granted, its state after} or {0, bal, res}
# (nothing taken: not enough room, or an account Redis does not have yet: the exact path seeds it).
LEASE = lua._NOW_MS + lua._FREE_EXPIRED_HOLDS + """
local ttl, at = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, amount = tonumber(ARGV[3]), tonumber(ARGV[4])
local a, kk, k, bal, res = 7 + want, 1, 0, 0, 0
if want > 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, 0} end
  free_expired_holds(KEYS[1], KEYS[2])
  bal = tonumber(redis.call('HGET', KEYS[1], 'bal'))
  res = tonumber(redis.call('HGET', KEYS[1], 'res'))
  k = math.floor((bal - res) / tonumber(ARGV[6]) / amount)
  if k > want then k = want end
  if k < tonumber(ARGV[5]) then return {0, bal, res} end
  kk = 3
end
local m = tonumber(ARGV[a])
local new, units = {}, {}
for i = 1, m do
  local b = a + 1 + 5 * (i - 1)
  local interval = tonumber(ARGV[b])
  local raw = redis.call('GET', KEYS[kk + i - 1])
  local debt = 0
  if raw then
    local was, owed = string.match(raw, '^(%S+) (%S+)$')
    debt = tonumber(owed) - (at - tonumber(was))
    if debt < 0 then debt = 0 end
  end
  local n = math.floor((tonumber(ARGV[b + 1]) - debt) / interval / tonumber(ARGV[b + 4]))
  if n > tonumber(ARGV[b + 2]) then n = tonumber(ARGV[b + 2]) end
  if n < tonumber(ARGV[b + 3]) then return {0, bal, res} end
  new[i], units[i] = debt + n * interval, n
end
local out = {1, bal, res, k}
if k > 0 then
  for j = 1, k do redis.call('ZADD', KEYS[2], now + ttl, ARGV[6 + j]) end
  out[3] = redis.call('HINCRBY', KEYS[1], 'res', k * amount)
end
for i = 1, m do
  local text = ARGV[2] .. ' ' .. string.format('%.17g', new[i])
  redis.call('SET', KEYS[kk + i - 1], text, 'PX', math.ceil(new[i] * 1000) + 1000)
  out[3 + 2 * i] = string.format('%.17g', units[i])
  out[4 + 2 * i] = text
end
return out
"""

# Give pooled holds back. KEYS: the account, its holds. ARGV: members. Reply: the amount freed.
GIVE_BACK = """
local freed = 0
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then freed = freed + tonumber(string.match(ARGV[i], '|(%d+)$')) end
end
if freed > 0 then redis.call('HINCRBY', KEYS[1], 'res', -freed) end
return freed
"""


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


class Leases:
    """This instance's leases, and the scripts that take and give them back."""

    def __init__(self, counters: RedisCounters) -> None:
        self.counters = counters
        self.pools: dict[str, Pool] = {}  # account id -> its pool
        self.rates: dict[tuple, RateLease] = {}  # rule state -> its lease
        self.pending: dict[object, asyncio.Future] = {}  # scope (account id, rule state) -> a LEASE on its way
        self.refused: dict[object, float] = {}  # scope -> time.monotonic() before which no LEASE is asked
        self._task: asyncio.Task | None = None
        self.life = 0  # counts Redis's lost lives (``lost``): a grant of an earlier one is ignored

    # -- a request ------------------------------------------------------------------------------
    def admit(self, admission: Admission) -> bool:
        """Take every claim from the leases, with no await: True when they covered all of them
        (``admission`` is then admitted), False with nothing taken."""
        link = self.counters.link
        if link.down or link.pipe is None or link.pipe.closed:
            return False  # (a charge must reach Redis: the exact path finds out, and answers 503 meanwhile)
        pools, rates, tats = self.pools, self.rates, self.counters.tats
        claims = admission.claims
        for claim in claims:
            kind = type(claim)
            if kind is CreditClaim:
                if claim.shared:  # type: ignore[union-attr]
                    pool = pools.get(claim.account.id)  # type: ignore[union-attr]
                    if pool is None or not pool.holds or pool.amount < claim.amount:  # type: ignore[union-attr]
                        return False
            elif kind is RateClaim:
                tokens = claim.tokens  # type: ignore[union-attr]
                for rule in claim.rules:  # type: ignore[union-attr]
                    lease = rates.get(rule.state)
                    if lease is None or lease.interval != rule.interval or lease.left < (tokens if rule.tokens else 1) \
                            or rule.state not in tats:
                        return False
            else:
                return False  # a slot or a capped total: exact
        now = time.monotonic()
        low = False
        for claim in claims:
            if type(claim) is CreditClaim:
                if not claim.shared:  # type: ignore[union-attr]
                    claim.hold = LOCAL_HOLD  # type: ignore[union-attr]
                    continue
                pool = pools[claim.account.id]  # type: ignore[union-attr]
                claim.hold = pool.holds.pop()  # type: ignore[union-attr]
                claim.balance, claim.reserved = pool.balance, pool.reserved  # type: ignore[union-attr]
                pool.used = now
                low = low or len(pool.holds) * 2 < pool.granted
            else:
                tokens = claim.tokens  # type: ignore[union-attr]
                taken = claim.taken = []  # type: ignore[union-attr]
                for rule in claim.rules:  # type: ignore[union-attr]
                    lease = rates[rule.state]
                    left = lease.left = lease.left - (tokens if rule.tokens else 1)
                    lease.used = now
                    low = low or left * 2 < lease.granted
                    # (the headers: the rule as the fleet has it, less what this instance leased and has left)
                    at, debt = tats[rule.state]
                    taken.append((at, debt - left * lease.interval))
        if low:
            self.lease(admission)
        return True

    async def wait(self, admission: Admission) -> bool:
        """Wait for the leases on their way to this admission's scopes: True when there were."""
        waiting = [f for scope in self._scopes(admission) if (f := self.pending.get(scope)) is not None]
        if not waiting:
            return False
        await asyncio.gather(*waiting, return_exceptions=True)
        return True

    def pooled(self, account_id: str) -> int:
        """What this instance's pool of the account holds, unused (the views leave it out of
        what is held: it is spendable by this instance's next requests)."""
        pool = self.pools.get(account_id)
        return pool.amount * len(pool.holds) if pool is not None else 0

    def view(self, state: tuple, tat: Tat | None) -> Tat | None:
        """A rule's TAT for the headers: the fleet's, as last seen, less what this instance
        leased of it and has not used (exact with one instance)."""
        lease = self.rates.get(state)
        if lease is None or tat is None:
            return tat
        return tat[0], tat[1] - lease.left * lease.interval

    def give_back_for(self, admission: Admission) -> None:
        """Before the exact ``ADMIT`` of ``admission``: this instance's unused leases of its
        scopes go back first (sent before it, in the same write), so that its answer counts them."""
        for scope in self._scopes(admission):
            if isinstance(scope, str):
                self._give_back_pool(scope)  # an account's pool
            else:
                self._give_back_rate(scope)  # a rule's units

    def after_exact(self, admission: Admission) -> None:
        """``admission`` was admitted the exact way: lease its scopes for the next requests."""
        if admission.refused is None and all(type(c) is CreditClaim or type(c) is RateClaim for c in admission.claims):
            self.lease(admission)

    # -- taking leases --------------------------------------------------------------------------
    @staticmethod
    def _scopes(admission: Admission) -> list:
        """The scopes an admission's claims lease: account ids (``str``) and rule states (``tuple``)."""
        out: list = []
        for claim in admission.claims:
            if type(claim) is CreditClaim and claim.shared:  # type: ignore[union-attr]
                out.append(claim.account.id)  # type: ignore[union-attr]
            elif type(claim) is RateClaim:
                out += [rule.state for rule in claim.rules]  # type: ignore[union-attr]
        return out

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
