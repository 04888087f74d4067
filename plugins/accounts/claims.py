"""Admission in one step: what every plugin claims of the counters, checked and taken together.

A request that is rate limited, metered and budgeted needs several scopes at
admission: a concurrency slot, its rate-limit rules (the key's, per model, its
account's), the credit hold, its budgets' capped totals. Each plugin knows its
own scopes and its own refusal; none should pay a round trip of its own. So in
``tollway_admit`` a plugin does not take: it adds claims to the request's
``Admission`` (``admission_of(call)``) and a continuation (``then``), and the
counters service runs every claim at once (``Counters.admit``), after every
``tollway_admit`` has added its own (``run_admission``, called from a
``trylast`` admit implementation of each plugin that claims; the first runs
them, the others find nothing left; in memory with no coroutine at all):

- every claim is checked, in the order they were added; the first that does
  not fit is ``admission.refused`` and NOTHING is taken (all or none);
- else every claim is taken (``admission.refused`` is None);
- then each continuation runs, in order: the refused claim's owner raises its
  refusal (the same status, message, headers and ``Retry-After`` as when it
  took alone), the others record what they took (``tollway_finish`` gives it
  back) or, when another scope refused, only add their headers.

In memory (``MemoryCounters``) that is a few dictionary operations with no
await; on Redis (``RedisCounters``) it is ONE Lua script (``ADMIT``,
``redis_scripts.py``): one round trip for the whole admission.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from proxy import ProxyError, StateKey

from .gcra import EPS, Refusal, Rule, Tat

if TYPE_CHECKING:
    from proxy import Call

    from .counters import Counters
    from .model import Account

#: The id of a credit hold kept in this process's memory (the accounts book's).
LOCAL_HOLD = "local"


@dataclass(slots=True, eq=False)
class SlotClaim:
    """One more request in flight in ``scope``, under ``limit``."""

    scope: str
    limit: int


@dataclass(slots=True, eq=False)
class RateClaim:
    """Take 1 from every requests rule and ``tokens`` from every tokens rule (GCRA)."""

    rules: tuple[Rule, ...]
    tokens: int
    now: float
    refusal: Refusal | None = None  # set when this claim refused: the rule furthest over, and the wait
    #: Set when it was taken in this process's memory (``admit_local``): each rule's new TAT, in
    #: ``rules``' order (the headers read them here, not back from the counters).
    taken: list[Tat] | None = None


@dataclass(slots=True, eq=False)
class TotalClaim:
    """Hold ``amount`` of the capped total ``name`` (see ``Counters.hold_total``)."""

    name: str
    cap: int
    amount: int
    seed: int = 0
    until: float = 0.0
    #: Shared counters that do not have the total (a new period, or Redis lost it) seed it
    #: with ``await fresh()`` (a read of the store) instead of ``seed`` (memory ignores it).
    fresh: Callable[[], Awaitable[int]] | None = None
    #: Once taken: the hold's id, for its settle (Redis: its member in the total's holds, one
    #: per admission whatever the number of totals; ``LOCAL_HOLD`` in memory; '' for nothing held).
    hold: str = ""


@dataclass(slots=True, eq=False)
class CreditClaim:
    """Hold ``amount`` of an account's balance (the accounts book makes these: ``credit_claim``)."""

    account: Account
    amount: int
    shared: bool  # held in Redis (a metered account with shared counters), else in this process
    hold: str = ""  # the hold's id once taken (``LOCAL_HOLD`` in memory)
    balance: int = 0  # the balance and the sum of holds the counters saw (a refusal's message)
    reserved: int = 0


Claim = SlotClaim | RateClaim | TotalClaim | CreditClaim
#: What a plugin runs once the claims were checked: ``callback()``, or ``function(*arguments)``.
Continuation = Callable[[], None] | tuple[Callable[..., None], tuple]
C = TypeVar("C", SlotClaim, RateClaim, TotalClaim, CreditClaim)


class Admission:
    """One request's claims and the continuations of the plugins that made them. A continuation is
    a callable, or a ``(function, arguments)`` pair (called as ``function(*arguments)``): a pair is
    two tuples, where a ``partial`` of a plugin's method costs its making, its kwargs dict and a
    call through C (~0.8k instructions a request more, callgrind)."""

    __slots__ = ("claims", "callbacks", "refused")

    def __init__(self) -> None:
        self.claims: list[Claim] = []
        self.callbacks: list[Continuation] = []
        #: After ``Counters.admit``: the first claim that did not fit (nothing was taken), or None (all were).
        self.refused: Claim | None = None

    def add(self, claim: C) -> C:
        self.claims.append(claim)
        return claim

    def then(self, callback: Continuation) -> None:
        """Run ``callback()`` (or a pair's ``function(*arguments)``) once the claims were checked
        (it may raise the plugin's refusal)."""
        self.callbacks.append(callback)


ADMISSION: StateKey[Admission] = StateKey("counters.admission")


def admission_of(call: Call) -> Admission:
    """The request's admission, made by the first plugin that claims."""
    admission = call.state.get(ADMISSION)
    if admission is None:
        admission = call.state[ADMISSION] = Admission()
    return admission


def run_admission(counters: Counters, call: Call) -> Awaitable[None] | None:
    """Check and take the request's claims at once (the first caller does; later ones
    find nothing), run every continuation, then raise the first refusal one raised. None
    when that is done; the coroutine that does it when the counters must await
    (``Counters.admit_now``: memory decides at once, Redis answers over the wire)."""
    admission = call.state.pop(ADMISSION, None)
    if admission is None:
        return None
    # Each continuation holds the admission (and the call): kept in the admission, they would make
    # a reference cycle per request (the whole call, its request and response with it) that only
    # the cyclic garbage collector frees, about 50 objects a request and its collections' cost.
    callbacks, admission.callbacks = admission.callbacks, []
    if admission.claims:
        local = counters.in_memory
        if local is not None:  # (MemoryCounters.admit_now, inline: a Python frame less a request)
            admit_local(local[0], local[1], local[2], admission)
        elif not counters.admit_now(admission):
            return _admit_then(counters, admission, callbacks)
    refusal: ProxyError | None = None  # (run_continuations, inline: a Python frame less a request)
    for callback in callbacks:
        try:
            if type(callback) is tuple:
                callback[0](*callback[1])
            else:
                callback()  # type: ignore[operator]
        except ProxyError as exc:
            refusal = refusal or exc
    if refusal is not None:
        raise refusal
    return None


async def _admit_then(counters: Counters, admission: Admission, callbacks: list[Continuation]) -> None:
    await counters.admit(admission)
    run_continuations(callbacks)


def run_continuations(callbacks: list[Continuation]) -> None:
    """Run every continuation of an admission that ran, then raise the first refusal one raised."""
    refusal: ProxyError | None = None
    for callback in callbacks:
        try:
            if type(callback) is tuple:
                callback[0](*callback[1])
            else:
                callback()  # type: ignore[operator]
        except ProxyError as exc:
            refusal = refusal or exc
    if refusal is not None:
        raise refusal


# -- in this process's memory (MemoryCounters) ----------------------------------------------------

def admit_local(tats: dict[tuple, float], in_flight: dict[str, int], total_of: Callable[[TotalClaim], list],
                admission: Admission) -> bool:
    """Check every claim against this process's state; take all, or none and say which refused.
    True: decided (``MemoryCounters.admit_now``'s answer)."""
    claims = admission.claims
    for claim in claims:
        kind = type(claim)
        if kind is RateClaim:
            # (gcra_check's loop, inline: a Python frame and its answer's tuple less a request;
            # tests/test_gcra_inline.py holds the two to the same answers)
            now = claim.now  # type: ignore[union-attr]
            tokens = claim.tokens  # type: ignore[union-attr]
            pending = []
            worst = None
            worst_wait = EPS  # a wait counts when over EPS; the longest one is reported
            for rule in claim.rules:  # type: ignore[union-attr]
                tat = tats.get(rule.state)
                # how far past now the TAT is (never before now: GCRA's max(TAT, now))
                if tat is None or (debt := tat[1] - (now - tat[0])) < 0.0:  # type: ignore[index]
                    debt = 0.0
                # (a requests rule's cost is 1: its interval itself, as 1 * interval is exactly; no int-by-float
                # product, which the interpreter does not specialize, for rpm and rpd)
                debt += tokens * rule.interval if rule.tokens else rule.interval
                if debt - rule.period > worst_wait:
                    worst, worst_wait = rule, debt - rule.period
                pending.append((now, debt))
            if worst is not None:
                claim.refusal = Refusal(worst, worst_wait)  # type: ignore[union-attr]
                return _refused(admission, claim)
            claim.taken = pending  # type: ignore[union-attr]  (what is taken below; None again on a refusal)
        elif kind is CreditClaim:
            acc = claim.account  # type: ignore[union-attr]
            claim.balance, claim.reserved = acc.balance, acc.reserved  # type: ignore[union-attr]
            if not acc.unlimited and claim.amount > acc.balance - acc.reserved:
                return _refused(admission, claim)
        elif kind is SlotClaim:
            if in_flight.get(claim.scope, 0) >= claim.limit:  # type: ignore[union-attr]
                return _refused(admission, claim)
        else:
            entry = total_of(claim)  # type: ignore[arg-type]
            if entry[0] + entry[1] + claim.amount > claim.cap:  # type: ignore[union-attr]
                return _refused(admission, claim)
    for claim in claims:  # every claim fits: take them all
        kind = type(claim)
        if kind is RateClaim:
            pending = claim.taken  # type: ignore[union-attr]
            for i, rule in enumerate(claim.rules):  # type: ignore[union-attr]  (zip(map(attrgetter)) into update(): ~300 more)
                tats[rule.state] = pending[i]  # type: ignore[index]
        elif kind is CreditClaim:
            acc = claim.account  # type: ignore[union-attr]
            if not acc.unlimited:
                acc.reserved += claim.amount
            claim.hold, claim.reserved = LOCAL_HOLD, acc.reserved  # type: ignore[union-attr]
        elif kind is SlotClaim:
            in_flight[claim.scope] = in_flight.get(claim.scope, 0) + 1  # type: ignore[union-attr]
        else:
            total_of(claim)[1] += claim.amount  # type: ignore[arg-type,union-attr]
            claim.hold = LOCAL_HOLD  # type: ignore[union-attr]
    return True



def _refused(admission: Admission, claim: Claim) -> bool:
    """``claim`` did not fit: nothing is taken (a rate claim checked before it has no ``taken``)."""
    admission.refused = claim
    for other in admission.claims:
        if type(other) is RateClaim:
            other.taken = None
    return True
