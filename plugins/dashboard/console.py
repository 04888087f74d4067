"""The operator's console: overview, spend, errors, latency, request log, cache.

Each page is one handler that runs its rollup queries and renders a
template. The same handler answers the page's polling with only the
``main`` block when asked with ``X-Fragment: 1``; ``/api/overview`` answers
the overview's figures as JSON.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from plugins.accounts import ACCOUNTS
from plugins.routing import ROUTER
from proxy import json_response

from . import queries, requestlog
from .auth import SESSION_KEY, Guard, redirect
from .ranges import RANGES, label, parse_range, steps_for
from .render import STATIC, Renderer

if TYPE_CHECKING:
    from proxy import Gateway

    from .options import DashboardOptions
    from .sessions import Session

NAV = (("overview", "", "Overview"), ("spend", "/spend", "Spend"), ("errors", "/errors", "Errors"),
       ("latency", "/latency", "Latency"), ("keys", "/keys", "Keys"), ("log", "/log", "Requests"))


def static_version() -> str:
    """A hash of the static files, so browsers cache them until they change."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


class Dashboard:
    def __init__(self, gateway: Gateway, options: DashboardOptions) -> None:
        self.gateway = gateway
        self.options = options
        base = (getattr(gateway.config.server, "base_path", "") or "").rstrip("/")
        self.root = base + "/dashboard"
        billing = gateway.config.section("billing")  # the quotas plugin's section, when it is on
        self.renderer = Renderer(self.root, static_version(), billing.currency if billing is not None else "USD")
        self.guard = Guard(self)

    @property
    def admin_key(self) -> str:
        return self.gateway.config.server.admin_key or ""

    @property
    def accounts(self):
        return self.gateway.services.get(ACCOUNTS)

    @property
    def store(self):
        return self.gateway.store

    @property
    def cache_on(self) -> bool:
        return self.gateway.pm.has_plugin("builtin:cache")

    # -- rendering helpers --------------------------------------------------------------
    def context(self, request: web.Request, active: str, **extra: Any) -> dict[str, Any]:
        session: Session = request[SESSION_KEY]
        nav = list(NAV) + ([("cache", "/cache", "Cache")] if self.cache_on else [])
        return {"nav": nav, "active": active, "csrf": session.csrf, "kind": session.kind,
                "poll": self.options.poll_seconds, "now": time.time(), "query": dict(request.query), **extra}

    def render(self, request: web.Request, template: str, ctx: dict[str, Any], status: int = 200) -> web.Response:
        return self.renderer.page(template, ctx, status=status, fragment=request.headers.get("X-Fragment") == "1")

    def login_page(self, request: web.Request, message: str = "", status: int = 200,
                   headers: dict[str, str] | None = None) -> web.Response:
        ctx = {"message": message, "admin_enabled": bool(self.admin_key), "next": request.query.get("next", "")}
        return self.renderer.page("login.html", ctx, status=status, headers=headers)

    def forbidden_page(self, request: web.Request, session: Session) -> web.Response:
        return self.renderer.page("forbidden.html", {"kind": session.kind}, status=403)

    def range_of(self, request: web.Request):
        rng = parse_range(request.query.get("range"), request.query.get("step"))
        return rng, {"range": rng, "ranges": list(RANGES), "steps": steps_for(rng.name)}

    # -- routes -------------------------------------------------------------------------
    def routes(self) -> list[web.AbstractRouteDef]:
        admin, admin_api = self.guard.page("admin"), self.guard.api("admin")
        r = self.root
        return [
            web.get(r + "/login", self.login),
            web.post(r + "/login", self.guard.sign_in),
            web.post(r + "/logout", self.guard.sign_out),
            web.get(r, admin(self.overview)),
            web.get(r + "/", admin(self.overview)),
            web.get(r + "/api/overview", admin_api(self.overview_data)),
            web.get(r + "/spend", admin(self.spend)),
            web.get(r + "/errors", admin(self.errors)),
            web.get(r + "/latency", admin(self.latency)),
            web.get(r + "/log", admin(self.log)),
            web.get(r + "/cache", admin(self.cache)),
            web.static(r + "/static", STATIC, append_version=False),
        ]

    async def login(self, request: web.Request) -> web.StreamResponse:
        session = await self.guard.session(request)
        if session is not None:
            return redirect(self.root if session.kind == "admin" else self.root + "/usage")
        return self.login_page(request)

    # -- pages --------------------------------------------------------------------------
    async def overview_figures(self, request: web.Request) -> dict[str, Any]:
        rng, picker = self.range_of(request)
        totals = await queries.totals(self.store, rng)
        series = await queries.series(self.store, rng)
        for point in series:
            point["label"] = label(point["t"], rng.step)
        return {**picker, "totals": totals, "series": series}

    async def overview(self, request: web.Request) -> web.StreamResponse:
        figures = await self.overview_figures(request)
        return self.render(request, "overview.html", self.context(request, "overview", **figures))

    async def overview_data(self, request: web.Request) -> web.StreamResponse:
        figures = await self.overview_figures(request)
        rng = figures.pop("range")
        return json_response({"range": rng.name, "step": rng.step, "start": rng.start, "end": rng.end,
                              "totals": figures["totals"], "series": figures["series"]})

    async def spend(self, request: web.Request) -> web.StreamResponse:
        rng, picker = self.range_of(request)
        by = request.query.get("by", "key")
        by = by if by in queries.BREAKDOWNS else "key"
        sort = request.query.get("sort", "cost")
        sort = sort if sort in queries.SORTS else "cost"
        descending = request.query.get("dir", "desc") != "asc"
        rows = await queries.breakdown(self.store, rng, by, sort, descending)
        names = self._key_names() if by == "key" else {}
        for row in rows:
            row["label"] = names.get(row["name"], row["name"] or "(none)")
        total = sum(r["cost_micro_usd"] for r in rows)
        return self.render(request, "spend.html", self.context(
            request, "spend", **picker, by=by, sort=sort, descending=descending, rows=rows, total_cost=total,
            breakdowns=list(queries.BREAKDOWNS)))

    async def errors(self, request: web.Request) -> web.StreamResponse:
        rng, picker = self.range_of(request)
        errs = await queries.errors_by(self.store, rng)
        series = await queries.series(self.store, rng)
        for point in series:
            point["label"] = label(point["t"], rng.step)
        router = self.gateway.services.get(ROUTER)
        upstreams = router.snapshot() if router is not None else []
        return self.render(request, "errors.html", self.context(request, "errors", **picker, series=series,
                                                                upstreams=upstreams, **errs))

    async def latency(self, request: web.Request) -> web.StreamResponse:
        rng, picker = self.range_of(request)
        rows = await queries.latency_by_model(self.store, rng)
        return self.render(request, "latency.html", self.context(request, "latency", **picker, rows=rows))

    async def cache(self, request: web.Request) -> web.StreamResponse:
        rng, picker = self.range_of(request)
        rows = await queries.cache_by_model(self.store, rng)
        hits, total = sum(r["hits"] for r in rows), sum(r["requests"] for r in rows)
        return self.render(request, "cache.html", self.context(
            request, "cache", **picker, rows=rows, hits=hits, requests=total, cache_on=self.cache_on,
            hit_rate=hits / total if total else 0.0))

    async def log(self, request: web.Request) -> web.StreamResponse:
        try:
            flt = requestlog.LogFilter.parse(request.query)
            problem = ""
        except requestlog.FilterError as exc:
            flt, problem = requestlog.LogFilter(), str(exc)
        cursor = requestlog.parse_cursor(request.query.get("before"))
        rows, nxt = await requestlog.page(self.store, flt, cursor)
        names = self._key_names()
        for row in rows:
            row["key_name"] = names.get(row["key_id"], row["key_id"] or "-")
        keys = sorted(((k.id, k.name) for k in (self.accounts.by_id.values() if self.accounts else ())),
                      key=lambda kv: kv[1].lower())
        return self.render(request, "log.html", self.context(
            request, "log", rows=rows, next_cursor=nxt, problem=problem, filters=flt, keys=keys,
            models=sorted(self.gateway.config.models), first_page=cursor is None))

    def _key_names(self) -> dict[str, str]:
        accounts = self.accounts
        return {k.id: k.name for k in accounts.by_id.values()} if accounts is not None else {}
