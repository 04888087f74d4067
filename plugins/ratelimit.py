"""Rate limits per key: rpm, tpm, rpd (and per-model overrides), concurrency.

The algorithm is GCRA (see ``plugins/accounts/gcra.py`` for what it is and
why it was chosen over a sliding window): one timestamp per key and limit,
exact ``Retry-After``, a burst of up to the full limit, no window-edge
doubling. Periods: rpm and tpm 60 s, rpd a rolling 24 h.

Tokens are estimated at admission (about four body bytes a token plus the
requested ``max_tokens``) and reconciled in ``tollway_settle`` with the real
usage (none when the call failed, or when ``call.billing.count_for_limits`` is
False, e.g. on some cache hits). A refused request changes no state.

Every response to a limited key carries ``X-RateLimit-Limit``,
``X-RateLimit-Remaining``, ``X-RateLimit-Reset`` (ISO 8601 time) and OpenAI's
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (reset as a
duration like ``1s`` or ``6m0s``); for each kind, the limit with the least
left is shown. Over a limit: 429 with ``Retry-After`` (seconds) and a
message naming the limit. ``concurrency`` caps requests in flight (429,
``Retry-After: 1``); the slot is freed in ``tollway_finish``.

The state lives in the counters service (``accounts/counters.py``): in this
process with ``storage.counters: memory``, where it is saved at shutdown and
loaded at start-up (a crash forgets it: at worst a key gets one more burst),
or in Redis, shared by every instance, with ``storage.counters: redis://``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable

from proxy import Call, Gateway, ProxyError, StateKey, hookimpl, only_if, settles_before_end

from .accounts import ACCOUNTS, Accounts, KeyRecord, Limits, ModelLimits
from .accounts.checks import check_config
from .accounts.claims import ADMISSION, Admission, RateClaim, SlotClaim, run_admission
from .accounts.counters import COUNTERS, Counters, MemoryCounters
from .accounts.estimate import tokens_estimate
from .accounts.gcra import Rule, iso_at, left_of, reset_of
from .accounts.limit_headers import Plan, put_headers
from .accounts.refusals import REFUSAL, Refusal

PERIODS = (("rpm", "requests", "requests per minute", 60.0), ("rpd", "requests", "requests per day", 86400.0),
           ("tpm", "tokens", "tokens per minute", 60.0))
STATE_TABLE = "create table if not exists tollway_ratelimit (name text primary key, tat double precision not null)"


#: What a request took from its key's tokens limits at admission (the rules, the estimate), until
#: ``tollway_settle`` reconciles it with the usage (a tuple, taken out then: settled once).
TAKEN: StateKey[tuple[tuple[Rule, ...], int]] = StateKey("ratelimit.taken")
#: The key id whose concurrency slot the call holds, until ``tollway_finish`` frees it (and runs only then).
SLOT_HELD: StateKey[str] = StateKey("ratelimit.slot_held")


NO_PLAN = Plan.of([])
NO_LIMITS = Limits()
NO_PLANNED = (None, None, NO_PLAN)  # (the memo's miss: no key's limits are None)
ACCOUNT_STATE = "acct:"  # an account's rules are keyed ("acct:<id>", "", "rpm"): no key id starts so
CONCURRENCY_REFUSAL = Refusal(scope="key", limit="concurrency")
_new = object.__new__  # (a slotted class's instance, its fields set by the hot path)


class Plugin:
    def __init__(self) -> None:
        self.counters: Counters | None = None
        self.accounts: Accounts | None = None
        self.store = None
        # key id -> model -> (its limits, its account's, the plan): two look-ups of strings, whose
        # hashes are cached, not a (key id, model) tuple made and hashed per request
        self._plans: dict[str, dict[str, tuple]] = {}
        self._planned = 0  # plans in the memo (bounded)
        self._tat_of = None  # counters.tats.get in memory (a C call a rule), else counters.tat

    @hookimpl
    def tollway_config_check(self, config) -> None:
        check_config(config)

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self._start(gateway)

    async def _start(self, gateway: Gateway) -> None:
        self.accounts = await gateway.services.open(ACCOUNTS)  # keys come on the principal; accounts here
        self.counters = counters = await gateway.services.open(COUNTERS)
        self._tat_of = counters.tats.get if type(counters) is MemoryCounters else counters.tat
        if not isinstance(counters, MemoryCounters):
            return  # shared counters keep their own state
        self.store = gateway.store
        await self.store.execute(STATE_TABLE)
        now = time.time()
        for name, tat in await self.store.fetchall("select name, tat from tollway_ratelimit"):
            if tat > now:
                kid, scope, label = name.split("\x1f")
                counters.tats[(kid, scope, label)] = (now, tat - now)

    @hookimpl
    def tollway_shutdown(self, gateway: Gateway):
        return self._stop(gateway)

    async def _stop(self, gateway: Gateway) -> None:
        counters = self.counters
        if self.store is None or not isinstance(counters, MemoryCounters):  # not started, or shared counters
            return
        now = time.time()
        # (stored as the absolute TAT: rounded once, to ~2.4e-7 s, across a restart)
        rows = [("\x1f".join(k), now + reset) for k, tat in counters.tats.items() if (reset := reset_of(tat, now))]
        async with self.store.transaction() as tx:
            await tx.execute("delete from tollway_ratelimit")
            if rows:
                await tx.executemany("insert into tollway_ratelimit (name, tat) values (?, ?)", rows)

    def _plan_of(self, key: KeyRecord, model: str, shared: Limits = NO_LIMITS, account: str = "") -> Plan:
        """The key's limits for this model, and its account's (``shared``), compiled
        once per version of each (hot path)."""
        models = self._plans.get(key.id)
        cached = models.get(model) if models is not None else None
        if cached is not None and cached[0] is key.limits and cached[1] is shared:
            return cached[2]
        limits = key.limits
        # (what the rule limits, its scope, its limits, the label's suffix)
        scopes: list[tuple[str, str, Limits | ModelLimits, str]] = [(key.id, "", limits, "")]
        per_model = limits.models.get(model)
        if per_model is not None:
            scopes.append((key.id, model, per_model, f" for {model}"))
        if not shared.empty:
            scopes.append((ACCOUNT_STATE + account, "", shared, f" of account {account!r} (shared by its keys)"))
        rules = []
        for owner, scope, scope_limits, suffix in scopes:
            for field, kind, label, period in PERIODS:
                value = getattr(scope_limits, field)
                if value is not None:
                    rules.append(Rule(tokens=kind == "tokens", label=label + suffix, scope=scope, limit=value,
                                      period=period, interval=period / value, state=(owner, scope, field),
                                      limit_text=str(value)))
        plan = Plan.of(rules) if rules else NO_PLAN
        if self._planned >= 100_000:  # keys come and go: keep the memo bounded
            self._plans.clear()
            self._planned = 0
        models = self._plans.get(key.id)
        if models is None:
            models = self._plans[key.id] = {}
        if model not in models:
            self._planned += 1
        models[model] = (limits, shared, plan)
        return plan

    @hookimpl(tryfirst=True)
    def tollway_admit(self, call: Call) -> None:
        key = call.principal
        if not isinstance(key, KeyRecord):
            return
        limits = key.limits
        try:  # (Accounts.account_of's look-up, inline: a call less; a subscript, not get(): a method call less)
            acc = self.accounts.accounts[key.account_id]
        except KeyError:
            acc = self.accounts.account_of(key)
        shared = acc.policy.limits
        if limits.empty and shared.empty:
            return
        state = call.state
        admission = state.get(ADMISSION)  # (admission_of, inline: a call less)
        if admission is None:
            # (Admission(), its fields set here: a class's Python __init__ is a frame entered from C, ~650
            # instructions; tests/test_claims_made_in_place.py holds these to the classes' own)
            admission = state[ADMISSION] = _new(Admission)
            admission.claims, admission.callbacks, admission.refused = [], [], None
        concurrency = limits.concurrency
        slot = admission.add(SlotClaim(key.id, concurrency)) if concurrency is not None else None
        try:  # (_plan_of's memo, read here: one call less; two subscripts, not get()s and their None tests)
            cached = self._plans[key.id][call.model]
        except KeyError:
            cached = NO_PLANNED
        if cached[0] is limits and cached[1] is shared:
            plan = cached[2]
        else:
            plan = self._plan_of(key, call.model, shared, acc.id)
        rate = None
        if plan.rules:
            estimate = tokens_estimate(call) if plan.token_rules else 0
            rate = _new(RateClaim)  # (RateClaim(plan.rules, estimate, time.time()), in place: see Admission's above)
            rate.rules, rate.tokens, rate.now = plan.rules, estimate, time.time()
            rate.refusal = rate.taken = None
            admission.claims.append(rate)
        # (a (function, arguments) pair: no partial made and called through C, no closure cells and no
        # Python frame to call through; Admission.then, inline; the function read off the class, not a
        # bound method made off the plugin instance: see quotas)
        admission.callbacks.append((Plugin._admitted, (self, call, admission, slot, rate, plan)))

    @hookimpl(specname="tollway_admit", trylast=True)
    @only_if(ADMISSION)  # (no plugin claimed, or quotas' admit_claims ran them: nothing to do)
    def admit_claims(self, call: Call) -> Awaitable[None] | None:
        """Every plugin's claims at once, one step (``accounts/claims.py``), after every admit added its own."""
        return run_admission(self.counters, call)

    def _admitted(self, call: Call, admission: Admission, slot: SlotClaim | None, rate: RateClaim | None,
                  plan: Plan) -> None:
        """The admission ran: the headers, what was taken (for settle and finish), or our refusal.
        (The key is ``call.principal``, its id the slot's scope; the estimate is ``rate.tokens``.)"""
        refused = admission.refused
        if refused is None:  # admitted (the usual answer): the headers, then what settle and finish give back
            if rate is not None:
                # Taken in memory: the new TATs as the admission took them (no look-up); else (shared
                # counters) read by self._tat_of.
                response = call.response  # (its headers replaced by a copy of the plan's: see put_headers)
                put_headers(response.headers, plan, self._tat_of, rate.now, rate.taken, response)
                if plan.token_rules:
                    call.state[TAKEN] = (plan.token_rules, rate.tokens)
            if slot is not None:
                call.state[SLOT_HELD] = slot.scope
            return
        if refused is slot:
            limit = slot.limit
            call.state[REFUSAL] = CONCURRENCY_REFUSAL
            raise ProxyError(429, f"rate limit exceeded: this key may have {limit} requests in "
                                  "flight at once; retry when one has finished",
                             code="concurrency_limit_exceeded", headers={"Retry-After": "1"},
                             extra={"limit": limit, "used": limit})
        if rate is not None:  # another claim (or ours) refused: the headers as the counters have them
            now = rate.now
            headers = call.response.headers
            put_headers(headers, plan, self._tat_of, now, rate.taken)
            if refused is rate and rate.refusal is not None:
                rule = rate.refusal.rule
                call.state[REFUSAL] = Refusal(
                    scope="account" if rule.state[0].startswith(ACCOUNT_STATE) else "model" if rule.scope else "key",
                    limit=rule.state[2])
                raise self._refusal(call.principal, rate.refusal.wait, rule, rate.tokens if rule.tokens else 1,
                                    dict(headers), self._used(rule, now))

    def status(self, key: KeyRecord, now: float | None = None) -> list[dict]:
        """Each of the key's limits with what is left and when it is full again
        (for the dashboard; not on the request path)."""
        now = time.time() if now is None else now
        out: list[dict] = []
        counters = self.counters
        if counters is None:
            return out
        acc = self.accounts.account_of(key) if self.accounts is not None else None
        shared = acc.policy.limits if acc is not None else NO_LIMITS
        for model in ("", *sorted(key.limits.models)):
            for rule in self._plan_of(key, model, shared, acc.id if acc is not None else "").rules:
                if model and not rule.scope:
                    continue  # the key's own (and its account's) limits are listed once, under ""
                reset = reset_of(counters.tat(rule.state), now)
                left = left_of(rule, reset)
                out.append({"label": rule.label, "model": rule.scope or None, "limit": rule.limit,
                            "remaining": min(left, rule.limit), "full_at": now + reset, "period": rule.period})
        if key.limits.concurrency is not None:
            out.append({"label": "requests in flight", "model": None, "limit": key.limits.concurrency,
                        "remaining": None, "full_at": None, "period": None})
        return out

    def _used(self, rule: Rule, now: float) -> int:
        """How much of ``rule`` is taken now (the limit minus what is left)."""
        return rule.limit - min(left_of(rule, reset_of(self.counters.tat(rule.state), now)), rule.limit)

    @staticmethod
    def _refusal(key: KeyRecord, wait: float, rule: Rule, cost: int, headers: dict, used: int) -> ProxyError:
        retry = max(1, math.ceil(wait))
        whose = "" if rule.state[0].startswith(ACCOUNT_STATE) else f" for key {key.name!r}"
        if rule.tokens and cost > rule.limit:
            # Waiting would not help: the request is bigger than the whole allowance.
            return ProxyError(413, f"this request's estimated {cost} tokens exceed the {rule.label} limit of "
                                   f"{rule.limit}{whose} on their own, so it can never be served; send a shorter "
                                   "request or a lower max_tokens", param="max_tokens", code="request_exceeds_limit",
                              headers=headers, extra={"limit": rule.limit, "used": used, "requested": cost})
        msg = f"rate limit exceeded: {rule.label} (limit {rule.limit}){whose}; retry in {retry}s"
        # resetAt: when this request fits again, the moment Retry-After points at.
        return ProxyError(429, msg, code="rate_limit_exceeded", headers={**headers, "Retry-After": str(retry)},
                          extra={"limit": rule.limit, "used": used, "resetAt": iso_at(time.time() + retry)})

    @hookimpl
    @settles_before_end  # with shared counters, the correction joins the charge's write to Redis
    def tollway_settle(self, call: Call) -> None:
        taken = call.state.pop(TAKEN, None)
        if taken is None:  # (no tokens limit, or reconciled already: this hook may run twice)
            return
        usage = call.billing.usage
        if not call.billing.count_for_limits:
            actual = 0
        elif usage is not None:
            actual = usage.prompt_tokens + usage.completion_tokens  # (usage.total_tokens, without the property's call)
        elif call.response.status != 200 or call.response.error is not None:
            actual = 0
        else:
            return  # an answer without usage: keep the estimate
        delta = actual - taken[1]
        if delta:
            self.counters.adjust(taken[0], delta)

    @hookimpl
    @only_if(SLOT_HELD)  # (without a concurrency slot: nothing to free)
    def tollway_finish(self, call: Call) -> None:
        scope = call.state.pop(SLOT_HELD, None)
        if scope is not None:
            self.counters.leave(scope)
