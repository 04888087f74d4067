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

The tuning (``CREDIT_SHARE``, ``RATE_SHARE``...), taking and giving back: ``redis_lease_stock.py``;
the scripts: ``redis_lease_scripts.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .claims import LOCAL_HOLD, Admission, CreditClaim, RateClaim
from .redis_lease_stock import LeaseStock

if TYPE_CHECKING:
    from .gcra import Tat


class Leases(LeaseStock):
    """Admission from this instance's leases (what takes and gives them back: ``LeaseStock``)."""

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
