"""The usage ledger: one row per model request, written behind in batches.

Which requests get a row: every chat / embeddings / messages request except
those refused as unauthenticated (401), so a key's every success, refusal
(402, 403, 404, 429) and failure is there, and a scanner without a key
cannot fill the table. With auth off every model request gets a row (key
empty). Columns: see ``plugins/accounts/db.py`` (time, key, account, model
asked and served, provider, status, error code, token counts, cost, latency,
time to first byte, stream, cache hit, client gone, estimated: the tokens
were counted by the gateway because the upstream never said; byok: sent with the
caller's own upstream key; attempts and the deployments tried, retries and
fallbacks included; incomplete: the answer began and was cut, billed for what
went out).

``cost_micro_usd`` is the money actually taken from the account (what the
quotas plugin charged), else the priced cost; so the ledger sums to the
money taken. A request's row is queued in ``tollway_settle`` (``trylast``,
right after quotas charged it, with no await in between) so the writer
always stores a row and its balance change in the same transaction; requests
refused before admission are queued in ``tollway_finish``.

The queue is bounded (``plugins.ledger.max_queue_rows``, rows not yet in the
store, the fleet's Redis stream included): while the store is away requests
go on and their rows wait; at the bound new requests are refused with 503
``storage_unavailable`` (counted in a log line, not queued), so no row of an
answered request is ever dropped.

Routes: ``GET /v1/usage`` (the calling key's rollups per day per model) and
``GET /admin/usage`` (all keys; filters key, model, since, until).
CLI: ``tollway usage [--key] [--model] [--since] [--until]``, ``tollway rollups
rebuild``. The writer keeps the hourly and daily rollups (``accounts/rollups.py``)
in the same transaction as the rows.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable

import orjson
from aiohttp import web

from proxy import (
    Call,
    Gateway,
    ProxyError,
    Route,
    Snapshot,
    StateKey,
    Usage,
    hookimpl,
    json_response,
    only_if,
    settles_before_end,
)

from .accounts import ACCOUNTS, Accounts
from .accounts.http import authenticate, check_admin
from .accounts.options import LedgerOptions
from .accounts.usage import query_rollups
from .quotas import RESERVATION, Reservation

MODEL_ENDPOINTS = frozenset(("chat", "embeddings", "messages", "responses", "completions", "images", "image_edits",
                             "speech", "transcriptions", "translations"))
# Set once a request's row is queued in tollway_settle (so tollway_finish does not queue another).
RECORDED: StateKey[bool] = StateKey("ledger.recorded")
# A row id chosen by the caller (a batch line's, so a restart can tell whether it was written).
LEDGER_ID: StateKey[str] = StateKey("ledger.id")
NO_USAGE = Usage()  # zero tokens, for a request without usage


NO_UNITS = (0, 0, 0)

#: 1.5 * 2**52: a float of magnitude under 2**51 plus this lands where floats are whole
#: numbers, so the addition rounds it to a whole number, half to even (IEEE 754's rounding,
#: as ``round()``'s), and the subtraction is exact: ``(us + _ROUNDER) - _ROUNDER == round(us)``
#: for ``_EXACT_LOW < us < _EXACT_HIGH``, two float additions instead of ``round()``'s call (~1.2k
#: instructions fewer; ``tests/test_ledger_row_fast.py`` holds the row's times to ``round()``'s).
_ROUNDER = 6755399441055744.0
_EXACT_LOW, _EXACT_HIGH = -(2.0**51), 2.0**51


def _deployment(route: Route) -> str:
    return route.deployment or f"{route.provider.name}/{route.upstream_model}"


def _units(call: Call) -> tuple[int, int, int]:
    """The units a unit-priced answer delivered, as the ledger's (images, characters,
    audio_ms) columns (zeros for a refusal or a failure)."""
    units = call.billing.units
    if units is None or call.response.status != 200:
        return NO_UNITS
    seconds = units.audio_seconds
    return units.images, units.characters, round(seconds * 1000) if seconds is not None else 0


class Plugin:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.accounts: Accounts | None = None
        # The day of the last row: [start, end) in unix seconds, as floats (a float compared with an int
        # costs ~400 instructions more).
        self._day_start = self._day_end = 0.0
        self._day_text = ""
        self._one_deployment: dict[str, str] = {}  # deployment -> its one-item JSON list

    @hookimpl
    def tollway_config_schema(self) -> dict:
        return {"plugins.ledger": LedgerOptions}

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self._start(gateway)

    async def _start(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.accounts = await gateway.services.open(ACCOUNTS)

    @hookimpl
    def tollway_reload(self, snapshot: Snapshot):
        """``plugins.ledger`` (flush_ms, batch_rows): the writer takes them at once."""
        accounts = self.accounts
        return (lambda: accounts.set_options(snapshot.config)) if accounts is not None else None

    @hookimpl(tryfirst=True)
    def tollway_admit(self, call: Call) -> None:
        """At the queue's bound (the store has been away long enough): refuse, rather than
        answer and queue a row that could not be kept. The refusal is counted in the logs,
        not queued."""
        writer = self.accounts.writer
        if writer.full():
            call.state[RECORDED] = True
            writer.refuse_one()
            raise ProxyError(503, "the gateway's store (storage.url) has not taken ledger rows for a while and its "
                                  "queue is full, so no new request can be recorded; retry shortly",
                             code="storage_unavailable", headers={"Retry-After": "1"})

    @hookimpl(trylast=True)
    @settles_before_end
    def tollway_settle(self, call: Call) -> Awaitable[None] | None:
        if call.state.get(RECORDED):
            return None  # refused at the queue's bound: not queued
        call.state[RECORDED] = True
        hold = call.state.get(RESERVATION)
        if hold is not None and hold.open and hold.cost is not None:
            # Shared counters: the charge and its row go to Redis in one script, before the
            # answer's last bytes (quotas asks the core for that). Within the hold the charge
            # is the cost (what the client was told): nobody waits for Redis's reply, only for
            # the script to be in Redis's socket (one write with everything else of this turn).
            return self._settle_shared(call, hold, hold.cost)
        # (record(), inline: a call fewer per request; row read off the class: a method read off a
        # plugin instance, whose __dict__ is a plain dict, is looked up unspecialized)
        self.accounts.writer.append(Plugin.row(self, call, hold))
        return None

    async def _settle_shared(self, call: Call, hold: Reservation, cost: int) -> None:
        row = self.row(call, hold)
        if 0 <= cost <= hold.amount:
            # (its budgets in the same script: one write and one reply, not a second script)
            hold.charged = self.accounts.settle_shared_behind(hold.account, hold.hold, hold.amount, cost, row,
                                                              hold.budget)
            hold.open = False
            hold.budget_settled = True
            await self.accounts.charges_written()
            return
        hold.charged = await self.accounts.settle_shared(hold.account, hold.hold, hold.amount, cost, row)
        hold.open = False

    @hookimpl
    @only_if(RECORDED, present=False)  # (a call that reached admit was recorded in settle: not called then)
    def tollway_finish(self, call: Call) -> None:
        if RECORDED not in call.state and call.endpoint in MODEL_ENDPOINTS and call.response.status != 401:
            self.record(call)

    def record(self, call: Call) -> None:
        self.accounts.writer.append(Plugin.row(self, call, call.state.get(RESERVATION)))

    def row(self, call: Call, hold: Reservation | None) -> tuple:
        """The call's ledger row: a ``LedgerRow``'s fields, as a plain tuple (the writer
        and the stores take rows as tuples; a NamedTuple built from one is a second
        tuple, and its instances are never untracked by the garbage collector). ``hold``: the
        call's quotas reservation (``call.state[RESERVATION]``), which the caller has read."""
        key = call.principal
        response = call.response
        billing = call.billing
        usage = billing.usage or NO_USAGE
        timing = call.timing
        # Read off the call's fields, not through its properties (latency_ms, served_model...):
        # each property is a Python call, and a row read six (~1k instructions each).
        begun = timing.started
        now = time.perf_counter()
        started = time.time() - (now - begun)
        day = self._day_text if self._day_start <= started < self._day_end else self._day(started)
        ended = timing.ended_at or now
        # latency_ms, ttfb_ms to the microsecond: round(us) / 1000 (see _ROUNDER), with the
        # arithmetic of Timing.latency_ms / ttfb_ms, then * 1000
        us = (ended - begun) * 1000.0 * 1000
        latency = ((us + _ROUNDER) - _ROUNDER) / 1000 if _EXACT_LOW < us < _EXACT_HIGH else round(us) / 1000
        first_byte = timing.first_byte_at
        ttfb = None
        if first_byte is not None:
            us = (first_byte - begun) * 1000.0 * 1000
            ttfb = ((us + _ROUNDER) - _ROUNDER) / 1000 if _EXACT_LOW < us < _EXACT_HIGH else round(us) / 1000
        error = response.error
        status = response.status
        route = call.route
        units = billing.units
        images, characters, audio_ms = NO_UNITS if units is None else _units(call)
        attempts = call.upstream_attempts
        deployments = None  # the deployments tried, as a JSON list (_deployments; its usual answer inline)
        if route is not None and attempts:
            if call.earlier_routes is None:
                deployments = self._one_deployment.get(route.deployment or f"{route.provider.name}/"
                                                       f"{route.upstream_model}")
            if deployments is None:
                deployments = self._deployments(call, route)
        # Positional, straight into the tuple: by name, a 29-field NamedTuple costs about
        # ten times as much (2-3 us a row). The order is LEDGER_COLUMNS' (plugins/accounts/db.py).
        # (1 if flag else 0, not int(flag): a call to int costs ten times as much.)
        return (
            call.state.get(LEDGER_ID) or call.id,  # id: the call's (its answer's x-tollway-request-id)
            started, day,  # time, day
            key.id if key else None, key.account_id if key else None,  # key_id, account_id
            call.endpoint, call.model,
            route.model if route is not None else None,  # served_model
            route.provider.name if route is not None else None,  # provider
            status,
            response.error_code or (error.code if error is not None else None),  # error_code
            1 if call.stream else 0, 1 if "hit" in (response.cache_status or "") else 0,  # stream, cache_hit
            1 if response.client_gone else 0,
            usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens,
            # cost_micro_usd: what quotas charged, else the priced cost (money_taken, inline)
            hold.charged if hold is not None else (billing.cost_micro or 0),
            latency, ttfb,  # latency_ms, ttfb_ms
            1 if billing.usage_estimated else 0,  # estimated
            images, characters, audio_ms,
            1 if billing.caller_key else 0,  # byok
            attempts, deployments,
            1 if status == 200 and error is not None else 0)  # incomplete: cut after it began

    def _deployments(self, call: Call, route: Route) -> str:
        """The deployments tried, in order, as a JSON list (the call's route, the last)."""
        earlier = call.earlier_routes
        if earlier is not None:
            return orjson.dumps([_deployment(r) for r in (*earlier, route)]).decode()
        name = route.deployment or f"{route.provider.name}/{route.upstream_model}"  # (_deployment, inline)
        text = self._one_deployment.get(name)
        if text is None:  # (made once per deployment: the usual row costs a dict look-up)
            if len(self._one_deployment) >= 4096:
                self._one_deployment.clear()
            text = self._one_deployment[name] = orjson.dumps([name]).decode()
        return text

    def _day(self, ts: float) -> str:
        """``YYYY-MM-DD`` (UTC) of ``ts``; the day is kept, so the next row of the same day
        costs two comparisons."""
        n = int(ts // 86400)
        self._day_start, self._day_end = float(n * 86400), float((n + 1) * 86400)
        self._day_text = time.strftime("%Y-%m-%d", time.gmtime(ts))
        return self._day_text

    @hookimpl
    def tollway_routes(self, gateway: Gateway) -> list:
        return [web.get("/v1/usage", self.my_usage), web.get("/admin/usage", self.all_usage)]

    async def my_usage(self, request: web.Request) -> web.Response:
        key = authenticate(self.accounts, request)
        data = await query_rollups(self.accounts, request, ("model", "since", "until"), key_id=key.id)
        return json_response({"object": "list", "key": {"id": key.id, "name": key.name}, **data})

    async def all_usage(self, request: web.Request) -> web.Response:
        check_admin(self.gateway, request)
        data = await query_rollups(self.accounts, request, ("key", "model", "since", "until"))
        return json_response({"object": "list", **data})

    @hookimpl
    def tollway_commands(self, subparsers: argparse._SubParsersAction) -> None:
        from .accounts.cli import add_rollups_command, add_usage_command

        add_usage_command(subparsers)
        add_rollups_command(subparsers)
