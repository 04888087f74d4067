"""Budgets: spend caps per key and per account, per calendar day, week and month.

A budget is a capped total in the counters service (``counters.py``): one
total per scope (a key or an account) and period, named
``budget:k:<key id>:2026-12-02`` or ``budget:a:<account>:2026-W49``. A request
holds its worst-case cost against every budget that applies, all or none, in
the same admission step as its credit reservation and its rate limits (one
``Admission``, see ``claims.py``; ``plugins/quotas.py``),
so a burst of concurrent requests cannot spend past a cap: what is held
counts as used until the request settles. Settling turns the hold into the
money actually taken (never more than was held: see quotas), a failure gives
it back. Each hold has an id its settle names: with shared counters it expires
with its instance (kill -9) within ``hold_ttl``, as a credit hold does, and a
settle sent twice (its first reply lost) counts once (``redis_scripts.py``).

Periods begin at the calendar boundaries of ``billing.timezone``
(``periods.py``); a budget's reset time is its period's end, which is what
``Retry-After`` and ``X-RateLimit-Reset`` say when it refuses. What was spent
in the current periods before this process started (or before a budget was
added) is read from the ledger: the hourly rollups for whole hours, the raw
ledger for the part of an hour the period begins in (``seed``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from proxy import ProxyError

from . import rollups
from .claims import Admission, TotalClaim
from .counters import MemoryCounters
from .gcra import iso_at
from .model import PERIODS
from .money import micro_to_usd, money_text
from .periods import Calendar

SEED_TIMEOUT_S = 5.0  # the store read that seeds a total Redis does not have (the request waits on it)

if TYPE_CHECKING:
    from .book import Accounts
    from .counters import Counters
    from .model import Account, Budgets, KeyRecord



@dataclass(frozen=True, slots=True)
class Cap:
    """One budget that applies to a request: its scope, period and cap (micro-units)."""

    scope: str  # "k" (a key) or "a" (an account)
    owner: str  # the key id or account id
    period: str  # daily, weekly, monthly
    cap: int
    who: str  # for people: "key 'demo'", "account 'acme'"


@dataclass(slots=True)
class BudgetHold:
    """What a request holds against its budgets (the totals' names), from admit to settle."""

    names: tuple[str, ...]
    amount: int
    #: The holds' ids its settle names (``TotalClaim.hold``): one per admission that held (two
    #: after a grown hold); none for a charge that held nothing (a recovered batch line's).
    holds: tuple[str, ...] = ()


@dataclass(slots=True)
class BudgetClaims:
    """A request's claims on its budgets (cap, total name, period end, the claim), until admitted."""

    claims: tuple[tuple[Cap, str, float, TotalClaim], ...]
    amount: int
    now: float


@dataclass(slots=True)
class Plan:
    """The budgets of one key and its account, and the totals they name in the
    periods holding ``start <= now < end`` (recomputed when a period ends)."""

    key_budgets: Budgets
    account_budgets: Budgets
    caps: tuple[Cap, ...]
    start: float = math.inf
    end: float = -math.inf
    entries: tuple[tuple[Cap, str, float], ...] = ()  # (cap, total name, period end)


class BudgetKeeper:
    def __init__(self, book: Accounts, counters: Counters, calendar: Calendar,
                 clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self.counters = counters
        self.calendar = calendar
        self.clock = clock
        self.seeds: dict[str, int] = {}  # total name -> spent before the counter held it
        self._plans: dict[tuple[str, str], Plan] = {}

    # -- what applies ------------------------------------------------------------------
    def plan(self, key: KeyRecord, acc: Account) -> Plan:
        """The budgets of this key and its account, compiled once per version of each."""
        plan = self._plans.get((key.id, acc.id))
        if plan is not None and plan.key_budgets is key.budgets and plan.account_budgets is acc.policy.budgets:
            return plan
        caps = tuple([Cap("k", key.id, period, cap, f"key {key.name!r}") for period, cap in key.budgets.caps]
                     + [Cap("a", acc.id, period, cap, f"account {acc.id!r}")
                        for period, cap in acc.policy.budgets.caps])
        if len(self._plans) > 100_000:
            self._plans.clear()
        plan = self._plans[(key.id, acc.id)] = Plan(key.budgets, acc.policy.budgets, caps)
        return plan

    def caps(self, key: KeyRecord, acc: Account) -> tuple[Cap, ...]:
        return self.plan(key, acc).caps

    def entries(self, plan: Plan, now: float) -> tuple[tuple[Cap, str, float], ...]:
        """(cap, total name, period end) of each budget at ``now``; names are made once per period."""
        if plan.start <= now < plan.end:
            return plan.entries
        entries, start, end = [], -math.inf, math.inf
        for cap in plan.caps:
            period = self.calendar.current(cap.period, now)
            entries.append((cap, self.name(cap, period.label), period.end))
            start, end = max(start, period.start), min(end, period.end)
        plan.entries, plan.start, plan.end = tuple(entries), start, end
        return plan.entries

    def name(self, cap: Cap, label: str) -> str:
        return f"budget:{cap.scope}:{cap.owner}:{label}"

    # -- the request path ----------------------------------------------------------------
    async def hold(self, key: KeyRecord, acc: Account, amount: int, shown: int | None = None) -> BudgetHold | None:
        """Hold ``amount`` against every budget of the key and its account, or none (an
        admission of its own, e.g. a retry's ``grow``): None when there are no budgets, else
        the hold; a ProxyError when one refuses (naming ``shown``, the request's whole worst
        case, when ``amount`` is a part)."""
        admission = Admission()
        claims = self.claim(key, acc, amount, admission)
        if claims is None:
            return None
        await self.counters.admit(admission)
        return self.admitted(claims, admission.refused, shown)

    def claim(self, key: KeyRecord, acc: Account, amount: int, admission: Admission) -> BudgetClaims | None:
        """Claim ``amount`` of every budget of the key and its account in the request's
        admission (``claims.py``: all or none, with its other claims): None when there are
        no budgets. Raises at once (400) when ``amount`` exceeds a whole budget."""
        if not key.budgets.caps and not acc.policy.budgets.caps:  # the usual case: two cached attributes
            return None
        now = self.clock()
        entries = self.entries(self.plan(key, acc), now)
        seeds = self.seeds
        for cap, _name, _end in entries:
            if amount > cap.cap:
                raise self._never_fits(cap, amount)
        claimed = tuple((cap, name, end, admission.add(TotalClaim(name, cap.cap, amount, seeds.get(name, 0),
                                                                  end + 86400, partial(self.fresh_seed, cap, now))))
                        for cap, name, end in entries)
        return BudgetClaims(claimed, amount, now)

    def admitted(self, claims: BudgetClaims, refused: object, shown: int | None = None) -> BudgetHold:
        """After the admission ran: the hold (nothing refused), or raise the refusal of the
        budget that refused (``refused``, the admission's refused claim, is one of ours)."""
        for cap, name, end, claim in claims.claims:
            if claim is refused:
                raise self._exceeded(cap, name, end, claims.now, claims.amount if shown is None else shown)
        hold = claims.claims[0][3].hold if claims.claims else ""  # (one id for every total of an admission)
        return BudgetHold(tuple(name for _cap, name, _end, _claim in claims.claims), claims.amount,
                          (hold,) if hold else ())

    async def grow(self, key: KeyRecord, acc: Account, hold: BudgetHold | None, amount: int) -> BudgetHold | None:
        """Raise ``hold`` to ``amount`` (a retry on a dearer route): the hold from now on; a
        ProxyError when a budget refuses (``hold`` stays as it was)."""
        if hold is None:
            return await self.hold(key, acc, amount)
        for cap in self.caps(key, acc):
            if amount > cap.cap:
                raise self._never_fits(cap, amount)
        extra = await self.hold(key, acc, amount - hold.amount, shown=amount)
        if extra is None:  # no budgets any more
            return hold
        if extra.names == hold.names:
            return BudgetHold(hold.names, amount, hold.holds + extra.holds)
        self.release(extra)  # a period ended since admit: hold it all in the new one
        grown = await self.hold(key, acc, amount)
        self.release(hold)
        return grown

    def settle(self, hold: BudgetHold, spent: int) -> None:
        self.counters.settle_totals(hold.names, hold.amount, spent, hold.holds)

    def release(self, hold: BudgetHold) -> None:
        self.counters.release_totals(hold.names, hold.amount, hold.holds)

    def _exceeded(self, cap: Cap, name: str, reset: float, now: float, amount: int) -> ProxyError:
        used = self.counters.used_total(name)
        cur = self.book.currency
        wait = max(1, math.ceil(reset - now))
        when = self.calendar.local_iso(reset)
        return ProxyError(
            429, f"budget exceeded: the {cap.period} budget of {cap.who} is {money_text(cap.cap, cur)}, "
                 f"{money_text(used, cur)} of it is spent and this request may cost up to {money_text(amount, cur)} "
                 f"(requests in flight hold the rest); it resets at {when} (in {wait}s)",
            code="budget_exceeded",
            headers={"Retry-After": str(wait), "X-RateLimit-Reset": iso_at(reset)},
            extra={"limit": micro_to_usd(cap.cap), "used": micro_to_usd(used), "resetAt": iso_at(reset),
                   "period": cap.period, "scope": "key" if cap.scope == "k" else "account"})

    def _never_fits(self, cap: Cap, amount: int) -> ProxyError:
        cur = self.book.currency
        return ProxyError(
            400, f"this request may cost up to {money_text(amount, cur)}, more than the whole "
                 f"{cap.period} budget of {cap.who} ({money_text(cap.cap, cur)}), so it can never be "
                 "served; lower max_tokens or send a shorter prompt", param="max_tokens",
            code="budget_too_small", extra={"limit": micro_to_usd(cap.cap), "requested": micro_to_usd(amount),
                                            "period": cap.period})

    # -- what was spent before -------------------------------------------------------------
    async def policy_changed(self) -> None:
        """A budget was set or changed: read what each scope spent in its current periods."""
        await self.load_seeds(flush=True)

    async def load_seeds(self, *, flush: bool = False) -> None:
        """Per key and per account, what the ledger says was spent in each current period.
        A budget applies from the moment it is set, before this read ends: a total that a
        request made meanwhile (in this process's memory) was made from the old reading,
        and is given the difference (``_count_missed``). The read holds the writer's flushes
        off (``book.lock``): a row stored meanwhile would be in the reading and in the total
        its request made, counted twice. ``flush``: store what is queued first, so the
        reading has every request that came before the budget did."""
        async with self.book.lock:
            if flush:
                await self.book.writer.flush_held()
            totals = self.counters.totals if isinstance(self.counters, MemoryCounters) else None
            before = dict(totals) if totals is not None else {}
            now = self.clock()
            seeds: dict[str, int] = {}
            store = self.book.store
            for period in PERIODS:
                current = self.calendar.current(period, now)
                for key_id, account_id, spent in await spent_since(store, current.start):
                    spent = int(spent or 0)
                    if key_id:
                        name = f"budget:k:{key_id}:{current.label}"
                        seeds[name] = seeds.get(name, 0) + spent
                    if account_id:
                        name = f"budget:a:{account_id}:{current.label}"
                        seeds[name] = seeds.get(name, 0) + spent
            old, self.seeds = self.seeds, seeds
            if totals is not None:
                _count_missed(totals, before, old, seeds)

    async def fresh_seed(self, cap: Cap, now: float) -> int:
        """What the store says ``cap``'s scope spent in its current period (shared counters
        that do not have the total: a new period, or Redis restarted empty; not what this
        process read at start, which other instances' spending has made old)."""
        await self.book.holds_back()  # Redis lost its data: the holds in flight first
        start = self.calendar.current(cap.period, now).start
        try:
            async with asyncio.timeout(SEED_TIMEOUT_S):
                return await spent_by(self.book.store, cap.scope, cap.owner, start)
        except Exception:
            raise ProxyError(503, f"the gateway's store (storage.url) cannot be reached to read what {cap.who} "
                                  f"spent this {cap.period} period; retry shortly", code="storage_unavailable",
                             headers={"Retry-After": "1"}) from None

    # -- for people ------------------------------------------------------------------------
    async def read(self, keys: Iterable[KeyRecord] = (), accounts: Iterable[Account] = ()) -> None:
        """Before ``status``/``account_status`` show them: the current period's totals of these
        keys' budgets (with their accounts') and these accounts', as the whole fleet spent
        them (shared counters; a process knows only its own replies). Counters down: as
        this process last saw them."""
        now = self.clock()
        caps = [cap for key in keys for cap in self.caps(key, self.book.account_of(key))]
        caps += [Cap("a", acc.id, period, cap, "") for acc in accounts for period, cap in acc.policy.budgets.caps]
        names = list({self.name(cap, self.calendar.current(cap.period, now).label): None for cap in caps})
        try:
            await self.counters.read_totals(names)
        except ProxyError:
            pass

    def status(self, key: KeyRecord, now: float | None = None) -> list[dict[str, Any]]:
        """Each budget of the key and its account: cap, spent, left, reset time."""
        return self._status(self.caps(key, self.book.account_of(key)), now)

    def account_status(self, acc: Account, now: float | None = None) -> list[dict[str, Any]]:
        return self._status(tuple(Cap("a", acc.id, period, cap, f"account {acc.id!r}")
                                  for period, cap in acc.policy.budgets.caps), now)

    def _status(self, caps: tuple[Cap, ...], now: float | None) -> list[dict[str, Any]]:
        now = self.clock() if now is None else now
        out = []
        for cap in caps:
            period = self.calendar.current(cap.period, now)
            name = self.name(cap, period.label)
            used = max(self.counters.used_total(name), self.seeds.get(name, 0))
            scope = "key" if cap.scope == "k" else "account"
            out.append({"label": f"{cap.period} budget of the {scope}", "scope": scope, "period": cap.period,
                        "limit_micro_usd": cap.cap, "spent_micro_usd": used,
                        "remaining_micro_usd": max(cap.cap - used, 0), "resets_at": period.end,
                        "period_start": period.start, "resets_at_local": self.calendar.local_iso(period.end)})
        return out


def _count_missed(totals: dict[str, list], before: dict[str, list], old: dict[str, int], seeds: dict[str, int]) -> None:
    """Totals made while the seeds were read (not the entry they had before: identity, so a
    total made again after it expired counts too) were made with the ``old`` seed; they
    get what the new reading adds. (Redis does not need this: a total it does not have is
    seeded by a fresh read of the store, ``fresh_seed``.)"""
    for name, entry in totals.items():
        if before.get(name) is not entry:
            entry[0] += max(seeds.get(name, 0) - old.get(name, 0), 0)


async def spent_since(store, start: float) -> list[tuple[str, str, int]]:
    """(key id, account id, money taken) since ``start``: the hourly rollups for the
    whole hours, the ledger itself for the part of the hour ``start`` falls in."""
    first_hour = math.ceil(start / 3600) * 3600
    rows = list(await store.fetchall(
        f"select key_id, account_id, sum(cost_micro_usd) from {rollups.table('hour', '_key')} "
        "where bucket >= ? group by key_id, account_id", (first_hour,)))
    if first_hour > start:
        rows += await store.fetchall(
            "select key_id, account_id, sum(cost_micro_usd) from tollway_ledger where time >= ? and time < ? "
            "group by key_id, account_id", (start, first_hour))
    return rows


async def spent_by(store, scope: str, owner: str, start: float) -> int:
    """What one key (``scope`` "k") or account ("a") spent since ``start`` (as ``spent_since``)."""
    column = "key_id" if scope == "k" else "account_id"
    first_hour = math.ceil(start / 3600) * 3600
    row = await store.fetchone(f"select coalesce(sum(cost_micro_usd), 0) from {rollups.table('hour', '_key')} "
                               f"where bucket >= ? and {column} = ?", (first_hour, owner))
    spent = int(row[0] or 0)
    if first_hour > start:
        row = await store.fetchone("select coalesce(sum(cost_micro_usd), 0) from tollway_ledger "
                                   f"where time >= ? and time < ? and {column} = ?", (start, first_hour, owner))
        spent += int(row[0] or 0)
    return spent
