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

from .auto import fit_of, order_group
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
        self.tables: dict[str, ModelTable] = {}  # models with upstreams
        self.virtual: dict[str, Any] = {}  # groups and auto, by name (their ModelConfig)
        self.gateway: Gateway | None = None
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
        self.gateway = gateway
        self.options = gateway.config.section("routing") or RoutingOptions()
        self.health = HealthBoard(self.options.health)
        models = gateway.config.models
        deployments: dict[str, Deployment] = {}
        tables = {}
        self.virtual = {name: m for name, m in models.items() if m.virtual}
        for name, m in models.items():
            if m.virtual:
                continue
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
            tables[name] = ModelTable(name, entries, m.strategy or self.options.strategy, tuple(m.fallbacks), m)
        self.deployments = deployments
        self.tables = tables

    # -- request time ---------------------------------------------------------------
    @hookimpl(trylast=True)
    async def tollway_resolve(self, call: Call) -> Route | None:
        table = self.tables.get(call.model)
        if table is not None:
            chain = (table, *(self.tables[f] for f in table.fallbacks)) if table.fallbacks else (table,)
        elif call.model in self.virtual:
            chain = await self._virtual_chain(call, self.virtual[call.model])
        else:
            return None
        if "models" in call.body and call.endpoint != "embeddings":
            chain = await self._clients_fallbacks(call, chain)
        state = RoutingState(chain)
        route = self._pick(state)
        if route is None:
            raise self._unavailable(call, state)
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

    # -- groups, auto and the client's own list ---------------------------------------
    async def _visible(self, call: Call, names: list[str]) -> list[str]:
        """The models of ``names`` the caller may use (the ``tollway_visible_models`` hooks)."""
        if self.gateway is not None:
            for hook in self.gateway.hooks.visible_models:
                filtered = await hook(call, names)
                if filtered is not None:
                    names = filtered
        return names

    async def _virtual_chain(self, call: Call, config: Any) -> tuple[ModelTable, ...]:
        if config.group is not None:
            return tuple(order_group(config.strategy, (self.tables[m] for m in config.group)))
        allowed = await self._visible(call, list(self.tables))
        if not allowed:
            raise ProxyError(403, f"{call.model!r} chooses among the models this API key may use, and it may use "
                                  "none; ask the operator to allow some", param="model", code="model_not_allowed")
        fit = fit_of(call.body)
        fitting, refused = [], []
        for i, name in enumerate(allowed):
            model = self.tables[name].config
            why = fit.why_not(model)
            if why is None:
                fitting.append((fit.cost(model), i, name))
            else:
                refused.append(f"{name} {why}")
        if not fitting:
            raise ProxyError(400, f"no model {call.model!r} may choose fits this request: " + "; ".join(refused[:8]),
                             param="model", code="no_model_fits")
        return tuple(self.tables[name] for _, _, name in sorted(fitting))

    async def _clients_fallbacks(self, call: Call, chain: tuple[ModelTable, ...]) -> tuple[ModelTable, ...]:
        """OpenRouter's ``models``: the client's own fallbacks, after ``model``, among models it may use."""
        body = call.body
        names = body.pop("models")
        call.set_body(body)  # not an upstream field
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > 16:
            raise ProxyError(400, "'models' must be a list of at most 16 model names (tried in order after "
                                  "'model')", param="models", code="invalid_models")
        unknown = [n for n in names if n not in self.tables]
        if unknown:
            raise ProxyError(400, f"'models' names {unknown[0]!r}, which is not a model with an upstream here "
                                  "(groups and auto cannot be listed)", param="models", code="model_not_found")
        allowed = set(await self._visible(call, names))
        refused = [n for n in names if n not in allowed]
        if refused:
            raise ProxyError(403, f"this API key may not use model {refused[0]!r} (listed in 'models')",
                             param="models", code="model_not_allowed")
        seen = {t.name for t in chain}
        extra = [self.tables[n] for n in dict.fromkeys(names) if n not in seen]
        return (*chain, *extra)

    def _unavailable(self, call: Call, state: RoutingState) -> ProxyError:
        now = self.clock()
        waits = [max(self.health.retry_in(e.deployment.name, now), e.deployment.limits_reset_in(now))
                 for table in state.chain for e in table.entries if e.weight > 0]
        wait = min(waits) if waits else self.options.health.cooldown
        retry = str(max(1, math.ceil(wait)))
        model = call.model
        why = "every upstream is unhealthy or at its limit" if waits else "every upstream is drained (weight 0)"
        return ProxyError(503, f"model {model!r} has no upstream available now ({why}); retry after {retry}s",
                          code="no_upstream_available", headers={"Retry-After": retry})
