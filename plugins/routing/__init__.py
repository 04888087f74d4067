"""Routing: the YAML ``models:`` table -> the deployment each request goes to.

Always on. A model has one upstream (``provider``/``model``) or several
(``deployments``), chosen per request by its ``strategy`` (``routing.strategy``
by default): ``weighted`` (random by weight), ``least_busy`` (fewest in
flight), ``latency`` (lowest moving average of the time to the answer's
head), ``cheapest`` (lowest deployment price). Weight 0 drains a deployment.
A deployment whose breaker is open (``health.py``) or whose minute is full
(``rpm``/``tpm``) is skipped; when a model has none left, its ``fallbacks``
are tried; when nothing is left, 503 with ``Retry-After``.

A ``group`` (other models, tried in turn) and ``auto`` (per request, the
cheapest model that fits, see ``auto.py``) resolve to a chain of models whose
deployments are tried in the same way; so does a client's own ``models``
list (OpenRouter's: fallbacks among models it may use, after ``model``).

Hooks: ``tollway_resolve`` (``trylast``, so a plugin can route a model
differently by answering first) picks the first deployment;
``tollway_attempt`` tells the breakers and the latency average, and sets
``x-tollway-model``, ``x-tollway-provider`` and ``x-tollway-attempts``;
``tollway_retry`` picks the next deployment after an unbilled failure
(``retry.py``); ``tollway_finish`` gives back what the request held. The
state lives in the gateway's ``Router`` (``router.py``, the ``ROUTER``
service), which ``GET /admin/upstreams`` and the dashboard show.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from multidict import istr

from proxy import Call, Gateway, ProxyError, Route, Snapshot, StateKey, hookimpl

from .admin import upstreams_routes
from .chains import clients_fallbacks, virtual_chain
from .health import HealthEvent
from .options import RoutingOptions
from .retry import backoff_seconds, counts_against, retry_after_of, retryable
from .router import ROUTER, Router, RoutingState

__all__ = ["ROUTER", "ROUTING", "HealthEvent", "Plugin", "Router", "RoutingState"]

ATTEMPTS = tuple(str(n) for n in range(12))  # x-tollway-attempts values, made once
KNOWN_ATTEMPTS = len(ATTEMPTS)
# (istr: the answer's case-insensitive headers take the name without folding it again: limit_headers.py says why)
MODEL_HEADER, PROVIDER_HEADER, ATTEMPTS_HEADER = istr("x-tollway-model"), istr("x-tollway-provider"), \
    istr("x-tollway-attempts")

_new = object.__new__  # (a slotted class's instance, its fields set by the hot path)

#: ``call.state`` key: the routing plugin's state of this request.
ROUTING: StateKey[RoutingState] = StateKey("routing.state")


class Plugin:
    def __init__(self) -> None:
        self.router: Router | None = None

    # -- start-up -------------------------------------------------------------------
    @hookimpl
    def tollway_config_schema(self) -> dict[str, Any]:
        return {"routing": RoutingOptions}

    @hookimpl
    def tollway_config_check(self, config: Any) -> None:
        (config.section("routing") or RoutingOptions()).check()

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return self._start(gateway)

    async def _start(self, gateway: Gateway) -> None:
        self.router = await gateway.services.open(ROUTER)

    @hookimpl
    def tollway_routes(self, gateway: Gateway) -> list:
        return upstreams_routes(gateway)

    @hookimpl
    def tollway_reload(self, snapshot: Snapshot) -> Callable[[], None] | None:
        """New tables from the new snapshot (``Router.rebuild``); a request keeps the Route it was given."""
        return self.router.rebuild(snapshot) if self.router is not None else None

    # -- request time ---------------------------------------------------------------
    @hookimpl(trylast=True)
    def tollway_resolve(self, call: Call) -> Route | Awaitable[Route | None] | None:
        # (a plain def: a model of the table, without the client's own fallbacks, is resolved at
        # once, with no coroutine; the rest is awaited: ``_resolve``)
        router = self.router
        if router is None:
            return None
        table = router.tables.get(call.model)
        if table is None or ("models" in call.body and call.endpoint != "embeddings"):
            return self._resolve(router, call) if table is not None or call.model in router.virtual else None
        # (RoutingState(table.chain), its fields set in place: a class's Python __init__ is a frame entered
        # from C, ~650 instructions; tests/test_routing_state_in_place.py holds it to the class's own)
        state = _new(RoutingState)
        state.chain, state.position, state.tried = table.chain, 0, []
        state.holding = state.served = None
        state.probe = state.fleet_probe = False
        route = router.pick(state)
        if state.probe and router.shared is not None:  # half-open: the fleet's probe slots
            return self._fleet_probe(router, call, state, route)
        return _routed(router, call, state, route)

    async def _resolve(self, router: Router, call: Call) -> Route:
        """A virtual model's chain, or the client's own fallbacks (``models``) added."""
        table = router.tables.get(call.model)
        if table is not None:
            chain = table.chain
        else:
            chain = await virtual_chain(router, call, router.virtual[call.model])
        if "models" in call.body and call.endpoint != "embeddings":
            chain = await clients_fallbacks(router, call, chain)
        state = RoutingState(chain)
        route = router.pick(state)
        if state.probe and router.shared is not None:  # half-open: the fleet's probe slots
            route = await router.claim_fleet_probe(state, route)
        return _routed(router, call, state, route)

    async def _fleet_probe(self, router: Router, call: Call, state: RoutingState, route: Route | None) -> Route:
        return _routed(router, call, state, await router.claim_fleet_probe(state, route))

    @hookimpl
    def tollway_attempt(self, call: Call, route: Route, error: ProxyError | None) -> None:
        headers = call.response.headers
        headers[MODEL_HEADER] = route.model
        headers[PROVIDER_HEADER] = route.provider.name
        attempts = call.upstream_attempts
        headers[ATTEMPTS_HEADER] = ATTEMPTS[attempts] if attempts < KNOWN_ATTEMPTS else str(attempts)
        state = call.state.get(ROUTING)
        router = self.router
        if state is None or state.holding is None or router is None:
            return
        dep = state.holding
        now = router.clock()
        if error is None:
            started = call.timing.attempt_started
            if started is not None:
                dep.observe_latency(time.perf_counter() - started)
            router.health.succeeded(dep.name, now, state.probe)
            state.probe = False
            if state.fleet_probe:  # (probe_over's own test, here: the usual attempt holds no fleet probe slot)
                router.probe_over(state, dep.name)
            state.served = dep  # still in flight until the answer ends (finish)
            return
        # A 429 on the caller's own upstream key (byok) is that key's quota, not the deployment's health.
        against = counts_against(error) and not (call.billing.caller_key and error.status == 429)
        router.health.record(dep.name, now, against, state.probe, error.code, retry_after_of(error))
        state.probe = False
        router.probe_over(state, dep.name)
        router.let_go(state)

    @hookimpl
    async def tollway_retry(self, call: Call, error: ProxyError) -> Route | None:
        state = call.state.get(ROUTING)
        router = self.router
        if state is None or router is None:
            return None
        options = router.options
        if not retryable(error, options.retry_timeouts) or call.upstream_attempts > options.retries:
            return None
        if time.perf_counter() - call.timing.started > options.deadline:
            return None
        route = router.pick(state)
        if state.probe and router.shared is not None:
            route = await router.claim_fleet_probe(state, route)
        if route is None:
            return None
        delay = backoff_seconds(options.backoff, call.upstream_attempts)
        if delay:
            await asyncio.sleep(delay)
        return route

    @hookimpl
    def tollway_finish(self, call: Call) -> None:
        state = call.state.get(ROUTING)
        router = self.router
        if state is None or router is None:
            return
        served = state.served
        usage = call.billing.usage
        if served is not None and usage is not None and served.tpm is not None:
            served.count_tokens(router.clock(), usage.total_tokens)
        router.let_go(state)


def _routed(router: Router, call: Call, state: RoutingState, route: Route | None) -> Route:
    """The route picked for ``call`` (none: the model is unavailable, a ProxyError), with its state kept."""
    if route is None:
        raise router.unavailable(call.model, state)
    call.state[ROUTING] = state
    return route
