"""Routing: the YAML ``models:`` table -> a Route per public model name.

Always on. It answers ``tollway_resolve`` last (``trylast``), so a plugin
can route a model differently by answering first.
"""

from __future__ import annotations

from proxy import Call, Gateway, Route, hookimpl


class Plugin:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    @hookimpl
    def tollway_startup(self, gateway: Gateway) -> None:
        models = gateway.config.models

        def route_of(name: str) -> Route:
            m = models[name]
            return Route(model=name, upstream_model=m.upstream_model, provider=gateway.providers[m.provider],
                         config=m)

        routes = {}
        for name, m in models.items():
            route = route_of(name)
            route.fallbacks = tuple(route_of(fb) for fb in m.fallbacks)
            routes[name] = route
        self.routes = routes

    @hookimpl(trylast=True)
    async def tollway_resolve(self, call: Call) -> Route | None:
        return self.routes.get(call.model)
