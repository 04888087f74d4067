"""The counters every instance must agree on within a request.

One gateway service, ``COUNTERS`` (``await gateway.services.open(COUNTERS)``),
chosen by ``storage.counters``: ``memory`` (this process; the embedded
default) or ``redis://host:port/db`` (shared by every worker and instance; see
``redis_counters.py`` and ``docs/fleet.md``). Plugins use only the methods
below, so what they enforce holds for one process and for a fleet alike:

- **Rate limits** (``take``, ``adjust``, ``tat``): GCRA rules
  (``gcra.Rule``), each keyed by its ``state`` (a tuple of strings naming what
  it limits: a key's ``rpm``, a key's per-model ``tpm``, an account's ``rpm``
  shared by its keys...). ``take`` takes 1 from every requests rule and
  ``tokens`` from every tokens rule, all or none.
- **Concurrency** (``enter``, ``leave``): requests in flight per scope (any
  string: a key id, an account id), under a limit.
- **Capped totals** (``hold_total``, ``settle_totals``, ``release_totals``,
  ``used_total``): an amount held then spent under a cap, per name; a budget
  is one (``name`` carries the period, e.g. ``budget:acct:acme:2026-12``,
  ``until`` says when it may be forgotten, ``seed`` what was spent before the
  counter existed, read from the ledger). Each hold has an id (``TotalClaim.hold``)
  that its settle names: in Redis a hold expires with its instance (``hold_ttl``) and
  a settle sent twice counts once.
- **Credit** is the accounts book's (``Accounts.hold`` / ``settle`` /
  ``release``): in redis mode the book takes its slices of each balance
  through this service.
- **Change notices** (``notify``, ``on``): "keys changed", "config
  reloaded"... reach every instance (a no-op with one process).

The request path: what takes (``take``, ``enter``, ``hold_total``) is
awaited, and costs a Redis round trip only when this instance's leased slice
does not cover it; what gives back (``adjust``, ``leave``, ``release_totals``,
``settle_totals``) returns at once and is sent behind. ``down`` is True while
the shared counters cannot be reached: callers refuse what they cannot decide
(``counters_unavailable``, see ``unavailable()``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from proxy import ProxyError, ServiceKey

from .claims import LOCAL_HOLD, Admission, TotalClaim, admit_local
from .gcra import Refusal, Rule, Tat, gcra_check

if TYPE_CHECKING:
    from proxy import Gateway


class Counters:
    """The interface (and what it promises); ``MemoryCounters`` and
    ``RedisCounters`` implement it."""

    kind = ""
    #: True while the shared counters cannot be reached (never in memory).
    down = False
    #: Counters that admit in this process's memory, at once: ``admit_local``'s first three
    #: arguments (``run_admission`` calls it with them, for ``admit_now``); None for the others.
    in_memory: tuple | None = None

    async def admit(self, admission: Admission) -> None:
        """Check every claim of ``admission`` (``claims.py``) and take them all, or none:
        ``admission.refused`` is then the first claim that did not fit (None: all taken)."""
        raise NotImplementedError

    def admit_now(self, admission: Admission) -> bool:
        """``admit``, done at once when these counters need no await for it (True), else
        nothing done (False: the caller awaits ``admit``)."""
        return False

    async def take(self, rules: tuple[Rule, ...], tokens: int, now: float) -> Refusal | None:
        """Take from every rule at once (1, or ``tokens`` for a tokens rule), or
        from none and say which rule refused and for how long."""
        raise NotImplementedError

    def tat(self, state: tuple) -> Tat | None:
        """A rule's theoretical arrival time as this instance sees it (for the headers)."""
        raise NotImplementedError

    def adjust(self, rules: tuple[Rule, ...], tokens: int) -> None:
        """Correct tokens rules by ``tokens`` (the real usage minus the estimate taken)."""
        raise NotImplementedError

    async def enter(self, scope: str, limit: int) -> bool:
        """One more request in flight in ``scope``; False when ``limit`` are already."""
        raise NotImplementedError

    def leave(self, scope: str) -> None:
        """One request of ``scope`` has finished (after a successful ``enter``)."""
        raise NotImplementedError

    async def hold_total(self, name: str, cap: int, amount: int, *, seed: int = 0, until: float = 0.0,
                         fresh: Callable[[], Awaitable[int]] | None = None) -> str | None:
        """Hold ``amount`` of the total ``name`` if used + held + amount <= cap: the
        hold's id (for its settle), or None. ``seed``: the used amount when the total
        does not exist yet; ``until``: unix time after which it may be forgotten (0:
        never). ``fresh``: shared counters that do not have the total (any more: Redis
        restarted empty) seed it with ``await fresh()`` (a fresh read of the store)
        instead of ``seed``. (A request's admission holds with a ``TotalClaim``.)"""
        raise NotImplementedError

    def settle_totals(self, names: Sequence[str], held: int, spent: int, holds: Sequence[str] = ()) -> None:
        """Turn a request's holds of ``held`` on the totals ``names`` (``holds``: their ids, one
        per admission that held: two after a grown hold) into what was spent (``spent`` may
        be less, or more: it is recorded). Named by its holds, a settle counts once; one that
        names none (a charge that held nothing) counts as it is."""
        raise NotImplementedError

    def release_totals(self, names: Sequence[str], held: int, holds: Sequence[str] = ()) -> None:
        """Give a request's holds back, spending nothing."""
        self.settle_totals(names, held, 0, holds)

    def used_total(self, name: str) -> int:
        """What was spent of ``name`` (as this instance last saw it)."""
        raise NotImplementedError

    async def read_totals(self, names: Sequence[str]) -> None:
        """Bring ``used_total`` of ``names`` up to what every instance spent (shared counters:
        what the admin API and ``/v1/credits`` show; a process sees only its own replies
        otherwise). Memory counters have it already."""

    async def settled(self) -> None:
        """Wait until what was given back (adjust, leave, release...) has been
        applied everywhere (tests, shutdown)."""

    def instances(self) -> int:
        """How many instances share these counters (1 in memory)."""
        return 1

    def notify(self, topic: str) -> None:
        """Tell every other instance that ``topic`` changed (their ``on`` callbacks run)."""

    def on(self, topic: str, callback: Callable[[], object]) -> None:
        """Run ``callback()`` (a coroutine function is awaited) when another instance notifies ``topic``."""

    async def close(self) -> None:
        pass


def unavailable(what: str = "this request") -> ProxyError:
    """The answer when the shared counters cannot be reached: money and limits are
    never decided blind."""
    return ProxyError(503, f"the gateway's shared counters (storage.counters) cannot be reached, so {what} "
                           "cannot be checked; retry shortly", code="counters_unavailable",
                      headers={"Retry-After": "1"})


class MemoryCounters(Counters):
    """Counters in this process's memory (``storage.counters: memory``)."""

    kind = "memory"

    def __init__(self) -> None:
        self.tats: dict[tuple, Tat] = {}
        self.in_flight: dict[str, int] = {}
        self.totals: dict[str, list] = {}  # name -> [used, held, until]
        self.in_memory = (self.tats, self.in_flight, self._claimed_total)

    async def admit(self, admission: Admission) -> None:
        admit_local(self.tats, self.in_flight, self._claimed_total, admission)

    def admit_now(self, admission: Admission) -> bool:
        # (a partial of admit_local set on the instance saved this frame, but a method shadowed by an
        # instance attribute is looked up unspecialized: no fewer instructions in the served target)
        return admit_local(self.tats, self.in_flight, self._claimed_total, admission)

    def _claimed_total(self, claim: TotalClaim) -> list:
        return self._total(claim.name, claim.seed, claim.until)

    async def take(self, rules: tuple[Rule, ...], tokens: int, now: float) -> Refusal | None:
        return take_local(self.tats, rules, tokens, now)

    def tat(self, state: tuple) -> Tat | None:
        return self.tats.get(state)

    def adjust(self, rules: tuple[Rule, ...], tokens: int) -> None:
        tats = self.tats
        for rule in rules:
            tat = tats.get(rule.state)
            if tat is not None:
                tats[rule.state] = (tat[0], tat[1] + tokens * rule.interval)

    async def enter(self, scope: str, limit: int) -> bool:
        n = self.in_flight.get(scope, 0)
        if n >= limit:
            return False
        self.in_flight[scope] = n + 1
        return True

    def leave(self, scope: str) -> None:
        n = self.in_flight.get(scope, 0) - 1
        if n > 0:
            self.in_flight[scope] = n
        else:
            self.in_flight.pop(scope, None)

    def _total(self, name: str, seed: int, until: float) -> list:
        entry = self.totals.get(name)
        if entry is None or (entry[2] and entry[2] <= time.time()):
            if len(self.totals) > 100_000:
                self._forget_expired()
            entry = self.totals[name] = [seed, 0, until]
        return entry

    def _forget_expired(self) -> None:
        now = time.time()
        for name in [n for n, e in self.totals.items() if e[2] and e[2] <= now and not e[1]]:
            del self.totals[name]

    async def hold_total(self, name: str, cap: int, amount: int, *, seed: int = 0, until: float = 0.0,
                         fresh: Callable[[], Awaitable[int]] | None = None) -> str | None:
        entry = self._total(name, seed, until)
        if entry[0] + entry[1] + amount > cap:
            return None
        entry[1] += amount
        return LOCAL_HOLD

    def settle_totals(self, names: Sequence[str], held: int, spent: int, holds: Sequence[str] = ()) -> None:
        totals = self.totals
        for name in names:
            entry = totals.get(name)
            if entry is not None:
                entry[1] -= held
                entry[0] += spent

    def used_total(self, name: str) -> int:
        entry = self.totals.get(name)
        return entry[0] if entry is not None else 0


def take_local(tats: dict[tuple, Tat], rules: tuple[Rule, ...], tokens: int, now: float) -> Refusal | None:
    """GCRA over ``tats`` (state -> TAT): every rule advances, or none does."""
    refusal, new_tats = gcra_check(tats, rules, tokens, now)
    if refusal is not None:
        return refusal
    for rule, new_tat in zip(rules, new_tats, strict=True):
        tats[rule.state] = new_tat
    return None


async def open_counters(gateway: Gateway) -> Counters:
    url = gateway.config.storage.counters
    if url == "memory":
        return MemoryCounters()
    from .redis_counters import open_redis_counters

    return await open_redis_counters(gateway)


COUNTERS: ServiceKey[Counters] = ServiceKey("counters", open_counters)
