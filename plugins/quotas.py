"""Quotas: prepaid credits. Reserve the worst case, settle the exact cost.

In ``tollway_admit`` a request claims its worst-case cost (with its budgets;
checked and taken together with the other plugins' claims, all or none, in one
step: ``accounts/claims.py``): an upper bound
of its prompt tokens (see ``plugins/accounts/estimate.py``) x input price +
its output cap (``max_completion_tokens``/``max_tokens``, else the model's
``max_output_tokens``, else ``plugins.quotas.default_max_tokens``) x output
price. When the account's balance minus its outstanding reservations cannot
cover it: 402, saying what was needed and what is left. A request without an
output cap whose hold bounds its bill (a metered account, or budgets) is sent
upstream with the cap it was held for (``accounts/output_cap.py``).

In ``tollway_settle`` the reservation is released and the cost charged:

- usage known (also when the client hung up and the core drained the
  upstream): the exact cost (``call.billing.cost_micro`` from the pricing plugin);
  a cost above the reservation is held first (``tollway_usage``), or cut, with what
  the client is told, to the reservation;
- usage unknown but output went out (a stream cut, timed out, or left by
  its client before its usage event; an upstream that sends none): the
  pricing plugin counted that output (``billing.usage_estimated``), and its
  cost is charged, capped by the reservation;
- nothing went out (an upstream error, a refusal, a stream that ended
  before any output): nothing;
- a non-stream answer whose usage is unknown and could not be counted (no
  canonical completion to read): the reservation, the worst case (a batch line's:
  at the batch share already), scaled by a multiplier set after it (a cache hit's):
  the upstream may have billed the whole answer, so this is the amount that can
  never leave the operator out of pocket.

The charge is capped at what the account holds, so a balance never goes
below zero, under any concurrency (everything happens on one event loop, with
no await between the check and the change). ``tollway_finish`` releases a
reservation that settle did not reach. ``GET /v1/credits`` answers the
calling key's balance, reservations and spend.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from proxy import (
    Call,
    Gateway,
    ProxyError,
    Route,
    Snapshot,
    StateKey,
    hookimpl,
    json_response,
    only_if,
    settles_before_end,
)
from proxy.logs import throttled
from proxy.provider import CALLER_KEYS

from .accounts import ACCOUNTS, Account, Accounts, KeyRecord
from .accounts.admin_accounts import AdminAccounts
from .accounts.book import LOCAL_HOLD
from .accounts.budgets import BudgetClaims, BudgetHold, BudgetKeeper
from .accounts.checks import check_config
from .accounts.claims import ADMISSION, Admission, CreditClaim, run_admission
from .accounts.counters import COUNTERS, Counters
from .accounts.estimate import UNREAD, output_bound, prompt_bound, requested_output
from .accounts.http import authenticate
from .accounts.money import MICRO, PriceBook, micro_to_usd, money_text, multiplier_ppm, tell_cost
from .accounts.money_reload import prepare_money_reload, top_up_text
from .accounts.options import AccountConfig, BillingOptions, QuotasOptions
from .accounts.output_cap import send_output_cap
from .accounts.periods import Calendar, zone
from .accounts.refills import Refills
from .accounts.refusals import REFUSAL, Refusal
from .accounts.units import check_units, unit_bound
from .accounts.views import account_view


@dataclass(slots=True)
class Reservation:
    """A request's hold on its account, from admit to settle (or finish)."""

    # (The fields admit sets come first: it passes them by position. Keywords to a class cost a
    # dict made and unpacked, ~250 instructions a request.)
    account: Account
    amount: int  # micro-USD held
    budget: BudgetHold | None = None  # what it holds against budgets (the same amount)
    hold: str = LOCAL_HOLD  # the book's id of the hold (in Redis with shared counters)
    #: The price multiplier ``amount`` was figured at (a batch line's share): one set later
    #: (a cache hit's) scales an unmeasured answer's charge, this one is in it already.
    multiplier: float = 1.0
    charged: int = 0  # micro-USD taken at settle (the ledger records it)
    open: bool = True
    #: With shared counters: the cost to charge, set in settle; the ledger plugin charges it
    #: together with the request's row (one Redis script), so neither exists without the other.
    cost: int | None = None
    budget_settled: bool = False


# The request's reservation: set in tollway_admit, charged in tollway_settle, read by the ledger.
RESERVATION: StateKey[Reservation] = StateKey("quotas.reservation")
# Set with the reservation while tollway_finish may have work (releasing a hold settle did not
# reach, a budget charged with the row in Redis); taken out when settle has done all of it.
FINISH_DUE: StateKey[bool] = StateKey("quotas.finish_due")

log = logging.getLogger("tollway.quotas")


def money_taken(call: Call) -> int:
    """Micro-USD this request cost its account, final from ``tollway_finish`` on: what
    quotas charged, else (quotas off) the priced cost. The ledger records it."""
    hold = call.state.get(RESERVATION)
    return hold.charged if hold is not None else (call.billing.cost_micro or 0)


CREDITS_REFUSAL = Refusal(scope="account", limit="credits")
_new = object.__new__  # (a slotted class's instance, its fields set by the hot path)


class Plugin:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.accounts: Accounts | None = None
        self.prices: PriceBook | None = None
        self.budgets: BudgetKeeper | None = None
        self.counters: Counters | None = None
        self.refills: Refills | None = None
        self.top_up = ""  # appended to 402 messages: where to top up (billing.billing_url)
        self.default_cap = 4096

    @hookimpl
    def tollway_config_check(self, config) -> None:
        check_config(config)

    @hookimpl
    def tollway_config_schema(self) -> dict:
        return {"plugins.quotas": QuotasOptions, "accounts": dict[str, AccountConfig] | None,
                "billing": BillingOptions | None}

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self._start(gateway)

    async def _start(self, gateway: Gateway) -> None:
        self.gateway = gateway
        billing = gateway.config.section("billing") or BillingOptions()
        self.prices = PriceBook(gateway.config.models, billing.usd_rate)
        self.default_cap = (gateway.config.section("plugins.quotas") or QuotasOptions()).default_max_tokens
        self.accounts = accounts = await gateway.services.open(ACCOUNTS)
        billing = gateway.config.section("billing") or BillingOptions()
        self.counters = counters = await gateway.services.open(COUNTERS)
        self.top_up = top_up_text(billing)
        calendar = Calendar(zone(billing.timezone))
        self.budgets = accounts.budgets = BudgetKeeper(accounts, counters, calendar)
        await self.budgets.load_seeds()
        self.refills = accounts.refills = Refills(accounts, calendar)
        await self.refills.apply_due()
        self.refills.start()

    @hookimpl
    def tollway_shutdown(self, gateway: Gateway):
        return self._stop()

    async def _stop(self) -> None:
        if self.refills is not None:
            await self.refills.stop()

    @hookimpl
    def tollway_reload(self, snapshot: Snapshot):
        """Prices, ``plugins.quotas``, ``billing`` (but its currency) and the YAML ``accounts:``
        (budgets, limits, refills, suspension): see ``accounts/money_reload.py``."""
        changes = prepare_money_reload(self.gateway.config, snapshot.config)
        return lambda: changes.apply(self, self.accounts, self.budgets, self.refills)

    @hookimpl
    def tollway_admit(self, call: Call) -> None:
        key = call.principal
        if not isinstance(key, KeyRecord) or call.route is None:
            return
        accounts = self.accounts
        acc = accounts.accounts.get(key.account_id)  # (Accounts.account_of's look-up, inline: a call less)
        if acc is None:
            acc = accounts.account_of(key)
        if acc.policy.suspended:
            raise ProxyError(402, f"the account {acc.id!r} of this key is suspended; ask the operator to "
                                  f"reinstate it{self.top_up}", code="account_suspended")
        asked = requested_output(call)  # (read once: the worst case and the output cap both need it)
        # (through the class: a method read off a plugin instance, whose __dict__ is a plain dict
        # (proxy/plugins._register), is looked up unspecialized, ~240 instructions more)
        amount, what = Plugin._worst_case(self, call, call.route, asked)
        state = call.state
        admission = state.get(ADMISSION)  # (admission_of, inline: a call less)
        if admission is None:  # (Admission(), in place: see ratelimit's admit)
            admission = state[ADMISSION] = _new(Admission)
            admission.claims, admission.callbacks, admission.refused = [], [], None
        # (Accounts.credit_claim, inline: a call less; CreditClaim(acc, amount, shared), its fields set in
        # place: a class's Python __init__ is a frame entered from C, ~650 instructions;
        # tests/test_claims_made_in_place.py holds these to the classes' own)
        credit = _new(CreditClaim)
        credit.account, credit.amount, credit.shared = acc, amount, accounts.shared is not None and not acc.unlimited
        credit.hold = ""
        credit.balance = credit.reserved = 0
        admission.claims.append(credit)  # (Admission.add and .then, inline: a method call less each)
        # (400 at once when it can never fit; BudgetKeeper.claim's own first test, inline: a call less
        # for the usual key, with no budgets)
        budgets = None if not key.budgets.caps and not acc.policy.budgets.caps else \
            self.budgets.claim(key, acc, amount, admission)
        if asked is None and (budgets is not None or not acc.unlimited):
            send_output_cap(call, self.default_cap, None)  # the hold bounds the bill: the upstream stops there too
        # (not a lambda; the function read off the class, not a bound method made off the instance)
        admission.callbacks.append(partial(Plugin._admitted, self, call, admission, credit, budgets, what))

    @hookimpl(specname="tollway_admit", trylast=True)
    @only_if(ADMISSION)  # (no plugin claimed, or ratelimit's admit_claims ran them: nothing to do)
    def admit_claims(self, call: Call) -> Awaitable[None] | None:
        """Every plugin's claims at once, one step (``accounts/claims.py``), after every admit added its own."""
        return run_admission(self.counters, call)

    def _admitted(self, call: Call, admission: Admission, credit: CreditClaim, budgets: BudgetClaims | None,
                  what: tuple) -> None:
        """The admission ran: keep the reservation, or say which of our scopes refused."""
        acc, amount = credit.account, credit.amount
        if credit.shared:  # (Accounts.claimed's own test, inline: a call less for a local hold)
            self.accounts.claimed(credit)
        refused = admission.refused
        if refused is credit:
            raise self._insufficient(call, acc, amount, what)
        budget = None
        if budgets is not None:
            try:
                budget = self.budgets.admitted(budgets, refused)
            except ProxyError as exc:
                if exc.code == "budget_exceeded" and exc.extra:
                    call.state[REFUSAL] = Refusal(scope=str(exc.extra.get("scope")),
                                                  limit=str(exc.extra.get("period")))
                raise
        if refused is None:
            # (Reservation(acc, amount, budget, credit.hold, call.billing.price_multiplier), in place: see above)
            call.state[RESERVATION] = hold = _new(Reservation)
            hold.account, hold.amount, hold.budget, hold.hold = acc, amount, budget, credit.hold
            hold.multiplier = call.billing.price_multiplier
            hold.charged = 0
            hold.open = True
            hold.cost = None
            hold.budget_settled = False
            call.state[FINISH_DUE] = True
            if credit.hold != LOCAL_HOLD:  # the charge goes to Redis: before the client has it all
                call.response.settle_before_end = True

    def _worst_case(self, call: Call, route: Route, asked: int | None = UNREAD) -> tuple[int, tuple]:
        """The most ``call`` can cost on ``route`` (micro-USD), and what that is (for a refusal's
        message, ``_what``: made only when one is sent). ``asked``: ``requested_output(call)``,
        when the caller has read it."""
        prompt = prompt_bound(call)
        # (the client's own cap, read by the caller: output_bound's answer without its call)
        output = asked if asked is not None and asked != UNREAD and call.endpoint != "embeddings" else \
            output_bound(call, self.default_cap, asked)
        own = call.state.get(CALLER_KEYS)  # the caller's own upstream key (byok): its price
        entry = self.prices.tables.get(route.model)  # (PriceBook.of's usual answer, inline: a call less)
        if own is None and entry is not None and entry[0] is route.config:
            table = entry[1]
        else:
            table = self.prices.of(route, own is not None and route.provider.name in own)
        if call.billing.units is not None:  # images, speech, transcriptions
            check_units(call, table)
            bound = unit_bound(call, table)
            if bound is not None:  # (None: this model bills the endpoint by its tokens)
                return bound, (call.endpoint, route.model)
        # A batch line's price multiplier is known now (a cache hit's comes later and only lowers it).
        multiplier = call.billing.price_multiplier
        # Every prompt token may be a prompt-cache write, which may cost more than input (Anthropic: 1.25x, 2x).
        writes = prompt if table.cache_write > table.input else 0
        amount = table.cost(prompt, output, multiplier_ppm=MICRO if multiplier == 1.0 else multiplier_ppm(multiplier),
                            cache_write=writes)
        return amount, (prompt, output, route.model)

    @staticmethod
    def _what(detail: tuple) -> str:
        """What a worst case is made of, in words (``_worst_case``'s second value)."""
        if len(detail) == 2:
            return f"{detail[0]} of {detail[1]} at its unit price"
        prompt, output, model = detail
        return f"at most {prompt} prompt and {output} completion tokens of {model}; lower max_tokens to need less"

    def _insufficient(self, call: Call, acc: Account, amount: int, what: tuple) -> ProxyError:
        call.state[REFUSAL] = CREDITS_REFUSAL
        cur = self.accounts.currency
        available, reserved = self.accounts.left(acc)
        held = f", {money_text(reserved, cur)} of it held by requests in flight" if reserved else ""
        return ProxyError(
            402, f"insufficient credits: this request needs up to {money_text(amount, cur)} ({self._what(what)}) "
                 f"and the key's account has {money_text(max(available, 0), cur)} left{held}; "
                 f"ask the operator to top it up{self.top_up}", code="insufficient_credits",
            extra={"balance": micro_to_usd(max(available, 0)), "required": micro_to_usd(amount)})

    @hookimpl
    async def tollway_reroute(self, call: Call, previous: Route) -> None:
        """A retry on another route (a fallback may be dearer): the hold grows to that route's
        worst case before it is tried, or the route is refused; it never shrinks (settle charges
        the real cost)."""
        hold = call.state.get(RESERVATION)
        route = call.route
        if hold is None or not hold.open or route is None:
            return
        amount, what = self._worst_case(call, route)
        if amount <= hold.amount:
            return
        why = f"{previous.model} failed and its fallback {route.model} costs more; "
        ticket = await self.accounts.grow(hold.account, hold.hold, hold.amount, amount)
        if ticket is None:
            err = self._insufficient(call, hold.account, amount, what)
            err.message = why + err.message
            raise err
        hold.hold, hold.amount = ticket, amount  # (settle and finish release all of it)
        hold.multiplier = call.billing.price_multiplier
        try:
            hold.budget = await self.budgets.grow(call.principal, hold.account, hold.budget, amount)
        except ProxyError as err:
            err.message = why + err.message
            raise

    @hookimpl(trylast=True)
    def tollway_usage(self, call: Call) -> Awaitable[None] | None:
        """What a client is told is what it is charged. A cost above the reservation (an
        upstream that reported more output than the cap allowed, an audio length the upload
        could hold but the gateway did not measure) grows the hold to it when the account
        can pay (no budget applies: a budget is a hard cap); otherwise the request costs its
        reservation, and the client is told that. (Before, the client was told the
        upstream's figure while settle took only what the hold or balance covered.)"""
        hold = call.state.get(RESERVATION)
        if hold is None or not hold.open:
            return None
        cost = call.billing.cost_micro
        if cost is None:
            if call.billing.usage is None and not call.stream and call.response.error is None:
                # An answer whose usage nobody could read or count (images on a model priced by
                # tokens, with no usage reported): it costs its reservation, and says so.
                tell_cost(call, self._unmeasured_cost(call, hold))
            return None
        if cost <= hold.amount:  # (the usual answer)
            return None
        return self._grow(call, hold, cost)

    async def _grow(self, call: Call, hold: Reservation, cost: int) -> None:
        """A cost above the reservation: the hold grown to it, or the client told the reservation."""
        if hold.budget is None:
            ticket = await self.accounts.grow(hold.account, hold.hold, hold.amount, cost)
            if ticket is not None:
                hold.hold, hold.amount = ticket, cost
                return
        throttled(log, logging.WARNING, "cost_over_reservation",
                  "a cost of %d micro-units passed its reservation of %d (model %s) and could not be held: "
                  "charged the reservation", cost, hold.amount, call.route.model if call.route is not None else "?")
        tell_cost(call, hold.amount)

    @hookimpl(tryfirst=True)
    @settles_before_end
    def tollway_settle(self, call: Call) -> None:
        hold = call.state.get(RESERVATION)
        if hold is None or not hold.open or hold.cost is not None:
            return
        cost = call.billing.cost_micro  # (priced and measured, the usual answer: _cost's answer without its call)
        if cost is None or call.billing.usage_estimated:
            cost = self._cost(call, hold)
        if hold.hold != LOCAL_HOLD:  # charged by the ledger plugin, with the row (budgets: capped)
            hold.cost = cost if hold.budget is None else min(cost, hold.amount)
            return
        hold.open = False
        if hold.budget is None:
            hold.charged = self.accounts.settle(hold.account, hold.amount, cost)
        else:  # a budget is a hard cap: never take more than was held against it
            hold.charged = self.accounts.settle(hold.account, hold.amount, min(cost, hold.amount))
            self.budgets.settle(hold.budget, hold.charged)
        call.state.pop(FINISH_DUE, None)  # closed and charged here (cost None): tollway_finish has nothing left

    def _cost(self, call: Call, hold: Reservation) -> int:
        usage = call.billing.usage
        if usage is not None or call.billing.cost_micro is not None:  # (a unit price needs no usage)
            cost = call.billing.cost_micro
            if cost is None:
                cost = self.prices.cost_of(call)
            # A count of the output (the upstream said nothing) never costs more than was held.
            return min(cost, hold.amount) if call.billing.usage_estimated else cost
        if call.stream or call.response.status != 200 or call.response.error is not None:
            return 0  # nothing went out (a stream's output, had there been any, was counted)
        return self._unmeasured_cost(call, hold)

    @staticmethod
    def _unmeasured_cost(call: Call, hold: Reservation) -> int:
        """An answer of unknown usage costs its reservation, scaled by a multiplier set after
        it (a cache hit's); the one it was figured at (a batch line's share) is in it already."""
        now = call.billing.price_multiplier
        if now == hold.multiplier:
            return hold.amount
        then = multiplier_ppm(hold.multiplier)
        return min(hold.amount, -(-hold.amount * multiplier_ppm(now) // then)) if then else 0

    @hookimpl
    @only_if(FINISH_DUE)
    def tollway_finish(self, call: Call) -> Awaitable[None] | None:
        hold = call.state.get(RESERVATION)
        if hold is not None and hold.open:
            hold.open = False
            if hold.cost is not None:  # settled, but no ledger plugin charged it: charge it without a row
                return self._charge_without_row(hold, hold.cost)
            self.accounts.release(hold.account, hold.amount, hold.hold)
            if hold.budget is not None:
                self.budgets.release(hold.budget)
            return None
        self._settle_budget(hold)
        return None

    async def _charge_without_row(self, hold: Reservation, cost: int) -> None:
        hold.charged = await self.accounts.settle_shared(hold.account, hold.hold, hold.amount, cost, None)
        self._settle_budget(hold)

    def _settle_budget(self, hold: Reservation | None) -> None:
        if hold is not None and hold.cost is not None and hold.budget is not None and not hold.budget_settled:
            hold.budget_settled = True  # charged in Redis by the ledger plugin (or just above)
            self.budgets.settle(hold.budget, hold.charged)

    @hookimpl
    def tollway_routes(self, gateway: Gateway) -> list:
        return [web.get("/v1/credits", self.credits), *AdminAccounts(gateway).routes()]

    async def credits(self, request: web.Request) -> web.Response:
        """The calling key's credit account, in USD (and micro-USD)."""
        key = authenticate(self.accounts, request)
        acc = await self.accounts.current(self.accounts.account_of(key))
        budgets = await self.accounts.budget_status(key)
        return json_response({"object": "credits", "key": {"id": key.id, "name": key.name, "prefix": key.prefix},
                              **account_view(acc, self.accounts.currency), "budgets": budgets})
