"""The customer's usage page: their balance, spend, limits and recent requests.

Everything here is narrowed to the signed-in key (its requests, its
spend) and that key's account (the balance, which keys on one account
share). No route takes an id from the browser: the key comes from the
server-side session, so another account's data cannot be asked for.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from plugins.accounts.views import account_view
from proxy import json_response

from . import queries, requestlog
from .auth import SESSION_KEY
from .ranges import RANGES, label, parse_range, steps_for

if TYPE_CHECKING:
    from .console import Dashboard

RECENT = 20


class CustomerPages:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    def routes(self) -> list[web.AbstractRouteDef]:
        r = self.dash.root
        return [web.get(r + "/usage", self.dash.guard.page("customer")(self.page)),
                web.get(r + "/api/usage", self.dash.guard.api("customer")(self.data))]

    def limits(self, key) -> list[dict[str, Any]]:
        """The key's limits with what is left and when they are full again, from
        the rate limiter; budgets join them when the accounts book has them."""
        limiter = self.dash.gateway.pm.get_plugin("builtin:ratelimit")
        if limiter is not None and hasattr(limiter, "status"):
            return limiter.status(key)
        return [{"label": name, "model": None, "limit": value, "remaining": None, "full_at": None, "period": None}
                for name, value in key.limits.to_dict().items() if name != "models"]

    async def budgets(self, key) -> list[dict[str, Any]]:
        """Budgets per period with their reset times, when the accounts book keeps them."""
        book = self.dash.accounts
        status = getattr(book, "budget_status", None)
        return list(await status(key)) if status is not None else []

    async def figures(self, request: web.Request) -> dict[str, Any]:
        session = request[SESSION_KEY]
        accounts = self.dash.accounts
        key = accounts.by_id[session.key_id]
        [acc] = (await accounts.current_many([accounts.account_of(key)])).values()
        rng = parse_range(request.query.get("range", "30d"), request.query.get("step"))
        scope = queries.Scope(key_id=key.id)
        store = self.dash.store
        series = await queries.series(store, rng, scope)
        for point in series:
            point["label"] = label(point["t"], rng.step)
        totals = await queries.totals(store, rng, scope)
        by_model = await queries.breakdown(store, rng, "model", scope=scope)
        try:
            flt = requestlog.LogFilter.parse(request.query, key_id=key.id)
        except requestlog.FilterError:
            flt = requestlog.LogFilter(key_id=key.id)
        cursor = requestlog.parse_cursor(request.query.get("before"))
        recent, nxt = await requestlog.page(store, flt, cursor, size=RECENT)
        return {"key": {"id": key.id, "name": key.name, "prefix": key.prefix,
                        "models": None if key.models is None else sorted(key.models),
                        "expires_at": key.expires_at},
                "account": account_view(acc, accounts.currency), "limits": self.limits(key),
                "budgets": await self.budgets(key), "range": rng, "ranges": list(RANGES), "steps": steps_for(rng.name),
                "totals": totals, "series": series, "by_model": by_model, "recent": recent, "next_cursor": nxt,
                "first_page": cursor is None}

    async def page(self, request: web.Request) -> web.StreamResponse:
        figures = await self.figures(request)
        session = request[SESSION_KEY]
        ctx = {"nav": [], "active": "usage", "csrf": session.csrf, "kind": "customer", "now": time.time(),
               "poll": self.dash.options.poll_seconds, "query": dict(request.query), **figures}
        return self.dash.render(request, "usage.html", ctx)

    async def data(self, request: web.Request) -> web.StreamResponse:
        figures = await self.figures(request)
        rng = figures.pop("range")
        figures.pop("ranges")
        figures.pop("steps")
        return json_response({"range": rng.name, "step": rng.step, **figures})
