"""Routing: the YAML ``models:`` table -> the deployment each request goes to.

Always on. A model has one upstream (``provider``/``model``) or several
(``deployments``), chosen per request by its ``strategy`` (``routing.strategy``
by default): ``weighted`` (random by weight), ``least_busy`` (fewest in
flight), ``latency`` (lowest moving average of the time to the answer's
head), ``cheapest`` (lowest deployment price). Weight 0 drains a deployment.
A deployment whose breaker is open (``health.py``) or whose minute is full
(``rpm``/``tpm``) is skipped; when a model has none left, its ``fallbacks``
are tried; when nothing is left, 503 with ``Retry-After``.

Hooks: ``tollway_resolve`` (``trylast``, so a plugin can route a model
differently by answering first) picks the first deployment;
``tollway_attempt`` tells the breakers and the latency average, and sets
``x-tollway-model``, ``x-tollway-provider`` and ``x-tollway-attempts``;
``tollway_retry`` picks the next deployment after an unbilled failure
(``retry.py``); ``tollway_finish`` gives back what the request held.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy import Call, Gateway, ProxyError, Route, StateKey, hookimpl

from .deployments import Deployment, Entry, ModelTable, choose
from .health import HealthBoard
from .options import RoutingOptions
from .retry import backoff_seconds, counts_against, retry_after_of, retryable

__all__ = ["ROUTING", "Plugin", "RoutingState"]


@dataclass(slots=True)
class RoutingState:
    """One request's way through the deployments (``call.state[ROUTING]``)."""

    chain: tuple[ModelTable, ...]  # the model, then its fallbacks
    position: int = 0  # the model of ``chain`` being tried
    tried: list[str] = field(default_factory=list)  # deployments tried, in order
    holding: Deployment | None = None  # counted in flight for this request
    probe: bool = False  # ``holding`` is a half-open probe whose outcome is not in yet
    served: Deployment | None = None  # the deployment that answered


#: ``call.state`` key: the routing plugin's state of this request.
ROUTING: StateKey[RoutingState] = StateKey("routing.state")


class Plugin:
    def __init__(self) -> None:
        self.options = RoutingOptions()
        self.tables: dict[str, ModelTable] = {}
        self.deployments: dict[str, Deployment] = {}
        self.health = HealthBoard(self.options.health)
        #: Seconds, for breakers and per-minute limits; tests replace it to move time.
        self.clock: Callable[[], float] = time.monotonic

    # -- start-up -------------------------------------------------------------------
    @hookimpl
    def tollway_config_schema(self) -> dict[str, Any]:
        return {"routing": RoutingOptions}

    @hookimpl
    def tollway_config_check(self, config: Any) -> None:
        (config.section("routing") or RoutingOptions()).check()

    @hookimpl
    def tollway_startup(self, gateway: Gateway) -> None:
        self.options = gateway.config.section("routing") or RoutingOptions()
        self.health = HealthBoard(self.options.health)
        models = gateway.config.models
        deployments: dict[str, Deployment] = {}
        tables = {}
        for name, m in models.items():
            entries = []
            for d in m.deployments:
                upstream_model = d.model or name
                key = f"{d.provider}/{upstream_model}"
                dep = deployments.get(key)
                if dep is None:
                    dep = deployments[key] = Deployment(key, d.rpm, d.tpm)
                price = d.price or m.price
                route = Route(model=name, upstream_model=upstream_model, provider=gateway.providers[d.provider],
                              config=m, deployment=key)
                entries.append(Entry(dep, route, d.weight, price.input + price.output))
            tables[name] = ModelTable(name, entries, m.strategy or self.options.strategy, tuple(m.fallbacks))
        self.deployments = deployments
        self.tables = tables

    # -- request time ---------------------------------------------------------------
    @hookimpl(trylast=True)
    async def tollway_resolve(self, call: Call) -> Route | None:
        table = self.tables.get(call.model)
        if table is None:
            return None
        chain = (table, *(self.tables[f] for f in table.fallbacks)) if table.fallbacks else (table,)
        state = RoutingState(chain)
        route = self._pick(state)
        if route is None:
            raise self._unavailable(state)
        call.state[ROUTING] = state
        return route

    @hookimpl
    async def tollway_attempt(self, call: Call, route: Route, error: ProxyError | None) -> None:
        headers = call.response.headers
        headers["x-tollway-model"] = route.model
        headers["x-tollway-provider"] = route.provider.name
        headers["x-tollway-attempts"] = str(call.upstream_attempts)
        state = call.state.get(ROUTING)
        if state is None or state.holding is None:
            return
        dep = state.holding
        now = self.clock()
        if error is None:
            started = call.timing.attempt_started
            if started is not None:
                dep.observe_latency(time.perf_counter() - started)
            self.health.record(dep.name, now, False, state.probe)
            state.probe = False
            state.served = dep  # still in flight until the answer ends (finish)
            return
        self.health.record(dep.name, now, counts_against(error), state.probe, error.code, retry_after_of(error))
        state.probe = False
        self._let_go(state)

    @hookimpl
    async def tollway_retry(self, call: Call, error: ProxyError) -> Route | None:
        state = call.state.get(ROUTING)
        options = self.options
        if state is None or not retryable(error, options.retry_timeouts):
            return None
        if call.upstream_attempts > options.retries:
            return None
        if time.perf_counter() - call.timing.started > options.deadline:
            return None
        route = self._pick(state)
        if route is None:
            return None
        delay = backoff_seconds(options.backoff, call.upstream_attempts)
        if delay:
            await asyncio.sleep(delay)
        return route

    @hookimpl
    async def tollway_finish(self, call: Call) -> None:
        state = call.state.get(ROUTING)
        if state is None:
            return
        served = state.served
        usage = call.billing.usage
        if served is not None and usage is not None and served.tpm is not None:
            served.count_tokens(self.clock(), usage.total_tokens)
        self._let_go(state)

    # -- choosing ---------------------------------------------------------------------
    def _pick(self, state: RoutingState) -> Route | None:
        """The next deployment to try (not tried yet, healthy, within its limits), from the
        model and then its fallbacks; it is counted in flight until let go."""
        self._let_go(state)
        now = self.clock()
        health = self.health
        chain = state.chain
        while state.position < len(chain):
            table = chain[state.position]
            eligible = [e for e in table.entries if e.weight > 0 and e.deployment.name not in state.tried
                        and health.available(e.deployment.name, now) and e.deployment.within_limits(now)]
            if eligible:
                entry = choose(table.strategy, eligible)
                dep = entry.deployment
                state.tried.append(dep.name)
                state.holding = dep
                state.probe = health.acquire(dep.name, now)
                dep.in_flight += 1
                dep.count_request(now)
                return entry.route
            state.position += 1
        return None

    def _let_go(self, state: RoutingState) -> None:
        dep = state.holding
        if dep is None:
            return
        state.holding = None
        dep.in_flight -= 1
        if state.probe:  # never reached the upstream
            state.probe = False
            self.health.release(dep.name)

    def _unavailable(self, state: RoutingState) -> ProxyError:
        now = self.clock()
        waits = [max(self.health.retry_in(e.deployment.name, now), e.deployment.limits_reset_in(now))
                 for table in state.chain for e in table.entries if e.weight > 0]
        wait = min(waits) if waits else self.options.health.cooldown
        retry = str(max(1, math.ceil(wait)))
        model = state.chain[0].name
        why = "every upstream is unhealthy or at its limit" if waits else "every upstream is drained (weight 0)"
        return ProxyError(503, f"model {model!r} has no upstream available now ({why}); retry after {retry}s",
                          code="no_upstream_available", headers={"Retry-After": retry})
