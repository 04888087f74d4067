"""The router: every model's deployments, their live numbers and their breakers.

One ``Router`` per gateway, a gateway service (``ROUTER``): the routing plugin
routes with it, and the admin API, the dashboard and other plugins read it
(``gateway.services.get(ROUTER).snapshot()``). Breaker changes are told to
every plugin's ``tollway_upstream_health(event)`` and logged; a breaker that
opens or closes is also emitted (``gateway.emit``) as ``deployment_opened`` /
``deployment_closed``, which the alerts plugin sends to its webhooks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy import Event, Gateway, ProxyError, Route, ServiceKey, Snapshot

from .deployments import Deployment, Entry, ModelTable, choose
from .health import CLOSED, HealthBoard, HealthEvent
from .options import RoutingOptions
from .shared_health import SharedHealth

__all__ = ["ROUTER", "Router", "RoutingState"]

log = logging.getLogger("tollway.routing")


@dataclass(slots=True)
class RoutingState:
    """One request's way through the deployments (``call.state[ROUTING]``)."""

    chain: tuple[ModelTable, ...]  # the model, then its fallbacks (or a group's members, auto's choices)
    position: int = 0  # the model of ``chain`` being tried
    tried: list[str] = field(default_factory=list)  # deployments tried, in order
    holding: Deployment | None = None  # counted in flight for this request
    probe: bool = False  # ``holding`` is a half-open probe whose outcome is not in yet
    fleet_probe: bool = False  # ``probe`` holds one of the fleet's probe slots (shared health)
    served: Deployment | None = None  # the deployment that answered


class Router:
    def __init__(self, gateway: Gateway, options: RoutingOptions) -> None:
        self.gateway = gateway
        self.options = options
        #: Seconds, for breakers and per-minute limits; tests replace it to move time.
        self.clock: Callable[[], float] = time.monotonic
        self.health = HealthBoard(options.health)
        self.health.listeners.append(self._announce)
        self.shared: SharedHealth | None = None  # with Redis counters: breakers shared by the fleet
        self.tables: dict[str, ModelTable] = {}  # models with upstreams
        self.virtual: dict[str, Any] = {}  # groups and auto, by name (their ModelConfig)
        self.deployments: dict[str, Deployment] = {}
        self._build()

    def _build(self) -> None:
        self.virtual, self.tables = self._tables(self.gateway.snapshot, self.options, self.deployments)

    def _tables(self, snapshot: Snapshot, options: RoutingOptions, deployments: dict[str, Deployment],
                keep: dict[str, Deployment] | None = None,
                limits: list[tuple[Deployment, int | None, int | None]] | None = None
                ) -> tuple[dict[str, Any], dict[str, ModelTable]]:
        """The virtual models and the tables of ``snapshot``; deployments go in ``deployments`` (one in
        ``keep`` is used again, its new limits noted in ``limits``)."""
        models = snapshot.config.models
        virtual = {name: m for name, m in models.items() if m.virtual}
        tables = {}
        for name, m in models.items():
            if m.virtual:
                continue
            entries = []
            for d in m.deployments:
                upstream_model = d.model or name
                key = f"{d.provider}/{upstream_model}"
                dep = deployments.get(key)
                if dep is None:
                    dep = (keep or {}).get(key)
                    if dep is None:
                        dep = Deployment(key, d.rpm, d.tpm)
                    elif limits is not None:
                        limits.append((dep, d.rpm, d.tpm))
                    deployments[key] = dep
                price = d.price or m.price
                route = Route(model=name, upstream_model=upstream_model, provider=snapshot.providers[d.provider],
                              config=m, deployment=key)
                entries.append(Entry(dep, route, d.weight, price.input + price.output))
            sole = entries[0] if len(entries) == 1 and entries[0].weight > 0 else None
            tables[name] = ModelTable(name, entries, m.strategy or options.strategy, tuple(m.fallbacks), m,
                                      sole=sole)
        for table in tables.values():
            table.chain = (table, *(tables[f] for f in table.fallbacks))
        return virtual, tables

    def rebuild(self, snapshot: Snapshot) -> Callable[[], None]:
        """A reload: the new tables, made now; returned, what puts them in place. A deployment still
        configured keeps its live numbers (in flight, latency, this minute's counts) under its new
        limits, and the breakers their state unless ``routing.health`` changed."""
        options = snapshot.config.section("routing") or RoutingOptions()
        deployments: dict[str, Deployment] = {}
        limits: list[tuple[Deployment, int | None, int | None]] = []
        virtual, tables = self._tables(snapshot, options, deployments, keep=self.deployments, limits=limits)

        def apply() -> None:
            for dep, rpm, tpm in limits:
                dep.rpm, dep.tpm = rpm, tpm
            if options.health != self.options.health:
                self.health = HealthBoard(options.health)
                self.health.listeners.append(self._announce)
            self.options, self.virtual, self.tables, self.deployments = options, virtual, tables, deployments
            if self.shared is not None:
                self.shared.watch_pools(snapshot.providers)

        return apply

    async def close(self) -> None:
        self.health.listeners.clear()

    # -- choosing -------------------------------------------------------------------
    def pick(self, state: RoutingState) -> Route | None:
        """The next deployment to try (not tried yet, healthy, within its limits), from the
        chain's models in turn; it is counted in flight until let go."""
        if state.holding is not None:
            self.let_go(state)
        health = self.health
        chain = state.chain
        tried = state.tried
        if not tried:
            sole = chain[0].sole
            if sole is not None:  # the usual request: a model with one deployment, first try
                dep = sole.deployment
                breaker = health.breakers.get(dep.name)
                if (breaker is None or breaker.state == CLOSED) and dep.rpm is None and dep.tpm is None:
                    tried.append(dep.name)
                    state.holding = dep
                    dep.in_flight += 1
                    return sole.route
        now = self.clock()
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

    async def claim_fleet_probe(self, state: RoutingState, route: Route | None) -> Route | None:
        """``pick`` chose a half-open probe (``state.probe``) and health is shared: the probe
        first takes one of the fleet's probe slots (a round trip, in half-open only); when
        they are all taken, the next deployment is picked instead."""
        while state.probe and self.shared is not None and state.holding is not None:
            try:
                claimed = await self.shared.claim_probe(state.holding.name, self.options.health.half_open_probes)
            except BaseException:  # cancelled (the client left): nothing stays held here
                self.let_go(state)
                raise
            if claimed:
                state.fleet_probe = True
                break
            self.let_go(state)
            route = self.pick(state)
        return route

    def probe_over(self, state: RoutingState, deployment: str) -> None:
        """The probe's outcome is in (``health.record``): its fleet slot is given back, after
        the new cooldown when it opened the breaker again."""
        if state.fleet_probe and self.shared is not None:
            state.fleet_probe = False
            self.shared.end_probe(deployment, self.health.retry_in(deployment, self.clock()))

    def let_go(self, state: RoutingState) -> None:
        dep = state.holding
        if dep is None:
            return
        state.holding = None
        dep.in_flight -= 1
        if state.probe:  # never reached the upstream
            state.probe = False
            self.health.release(dep.name)
            if state.fleet_probe and self.shared is not None:
                state.fleet_probe = False
                self.shared.end_probe(dep.name, 0.0)

    def unavailable(self, model: str, state: RoutingState) -> ProxyError:
        now = self.clock()
        waits = [max(self.health.retry_in(e.deployment.name, now), e.deployment.limits_reset_in(now))
                 for table in state.chain for e in table.entries if e.weight > 0]
        wait = min(waits) if waits else self.options.health.cooldown
        retry = str(max(1, math.ceil(wait)))
        why = "every upstream is unhealthy or at its limit" if waits else "every upstream is drained (weight 0)"
        return ProxyError(503, f"model {model!r} has no upstream available now ({why}); retry after {retry}s",
                          code="no_upstream_available", headers={"Retry-After": retry})

    # -- what operators and plugins see -----------------------------------------------
    def _announce(self, event: HealthEvent) -> None:
        if event.state == "open":
            log.warning("upstream %s: breaker open for %.0fs: %s", event.deployment, event.retry_in, event.reason)
        elif event.state == "closed":
            log.info("upstream %s: breaker closed: %s", event.deployment, event.reason)
        try:
            self.gateway.pm.hook.tollway_upstream_health(event=event)
        except Exception:
            log.exception("a tollway_upstream_health hook failed")
        if event.remote:
            return  # the instance whose breaker changed tells the fleet and the operator
        if self.shared is not None:
            self.shared.publish(event)
        if event.state == "open":  # the alerts plugin's deployment_opened / deployment_closed
            self.gateway.emit(Event("deployment_opened", {"deployment": event.deployment, "reason": event.reason,
                                                          "retry_in": round(event.retry_in, 3)}))
        elif event.state == "closed":
            self.gateway.emit(Event("deployment_closed", {"deployment": event.deployment, "reason": event.reason}))

    def snapshot(self) -> list[dict[str, Any]]:
        """Every deployment: breaker state, counts over the window, load, latency, this minute's use."""
        now = self.clock()
        breakers = self.health.snapshot(now)
        used_by: dict[str, list[dict[str, Any]]] = {}
        for table in self.tables.values():
            for e in table.entries:
                used_by.setdefault(e.deployment.name, []).append({"model": table.name, "weight": e.weight})
        out = []
        for name, dep in self.deployments.items():
            provider, _, upstream_model = name.partition("/")
            breaker = breakers.get(name) or {"state": "closed", "retry_in": 0.0, "requests": 0, "failures": 0,
                                             "reopens": 0, "probes_in_flight": 0, "last_error": None}
            this_minute = int(now // 60) == dep.minute
            out.append({
                "deployment": name, "provider": provider, "upstream_model": upstream_model,
                "models": used_by.get(name, []), **breaker, "in_flight": dep.in_flight,
                "latency_ms": None if dep.latency_s is None else round(dep.latency_s * 1000, 1),
                "rpm": {"limit": dep.rpm, "used": dep.requests if this_minute else 0},
                "tpm": {"limit": dep.tpm, "used": dep.tokens if this_minute else 0},
            })
        return out

    def key_pools(self) -> dict[str, list[dict[str, Any]]]:
        """Each key pool: per key (by position, never the key), how long it still rests."""
        out = {}
        for name, provider in self.gateway.providers.items():
            pool = provider.key_pool
            if pool is not None:
                now = pool.clock()
                out[name] = [{"key": i + 1, "resting_for": round(max(0.0, until - now), 1)}
                             for i, until in enumerate(pool.resting_until)]
        return out


async def open_router(gateway: Gateway) -> Router:
    router = Router(gateway, gateway.config.section("routing") or RoutingOptions())
    if gateway.config.storage.counters != "memory":
        from ..accounts.counters import COUNTERS
        from ..accounts.redis_counters import RedisCounters

        counters = await gateway.services.open(COUNTERS)
        if isinstance(counters, RedisCounters):
            shared = router.shared = SharedHealth(counters, lambda: router.health, lambda: router.clock(),
                                                  lambda: router.gateway.providers)
            shared.watch_pools(gateway.providers)
            await shared.load()
    return router


#: The gateway's router (opened by the routing plugin at start-up).
ROUTER: ServiceKey[Router] = ServiceKey("routing.router", open_router)
