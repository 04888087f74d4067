"""Keys and accounts in the console: list, search, one key's page, and the changes.

The changes (create, change limits and models, disable, revoke, top up) are
the admin API's own handlers (``AdminKeys``), mounted under
``/dashboard/api/keys`` behind the session and CSRF guard instead of the
admin-key header: one code path, one set of checks, one accounts book.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from plugins.accounts.admin import AdminKeys
from plugins.accounts.views import key_view

from . import queries
from .ranges import label, parse_range

if TYPE_CHECKING:
    from .console import Dashboard

STATUSES = ("active", "disabled", "expired", "revoked")


def _no_check(gateway, request: web.Request) -> None:
    """The dashboard's guard has already checked the session and CSRF token."""


class KeyPages:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.api = AdminKeys(dash.gateway, check=_no_check)

    def routes(self) -> list[web.AbstractRouteDef]:
        r = self.dash.root
        page = self.dash.guard.page("admin")
        change = self.dash.guard.api("admin", change=True)
        read = self.dash.guard.api("admin")
        return [
            web.get(r + "/keys", page(self.keys)),
            web.get(r + "/keys/{id}", page(self.key)),
            web.get(r + "/accounts", page(self.account_list)),
            web.get(r + "/api/keys", read(self.api.list)),
            web.post(r + "/api/keys", change(self.api.create)),
            web.patch(r + "/api/keys/{id}", change(self.api.update)),
            web.delete(r + "/api/keys/{id}", change(self.api.revoke)),
            web.post(r + "/api/keys/{id}/credits", change(self.api.topup)),
        ]

    async def _views(self) -> list[dict[str, Any]]:
        accounts = self.dash.accounts
        if accounts is None:
            return []
        now = time.time()
        live = await accounts.current_many(accounts.account_of(k) for k in accounts.by_id.values())
        return [key_view(k, live[k.account_id], now, accounts.currency) for k in accounts.by_id.values()]

    async def keys(self, request: web.Request) -> web.StreamResponse:
        q = request.query.get("q", "").strip().lower()
        status = request.query.get("status", "")
        views = await self._views()
        shown = [v for v in views
                 if (not q or q in v["name"].lower() or q in v["id"].lower() or q in v["prefix"].lower()
                     or q in v["account"]["id"].lower())
                 and (status not in STATUSES or v["status"] == status)]
        shown.sort(key=lambda v: (v["status"] != "active", v["name"].lower()))
        rng = parse_range("30d", "day")
        spend = {row["name"]: row for row in await queries.breakdown(self.dash.store, rng, "key", limit=100000)}
        for v in shown:
            row = spend.get(v["id"])
            v["spend_30d"] = row["cost_micro_usd"] if row else 0
            v["requests_30d"] = row["requests"] if row else 0
        ctx = self.dash.context(request, "keys", keys=shown, total=len(views), q=q, status=status,
                                statuses=STATUSES, models=sorted(self.dash.gateway.config.models))
        return self.dash.render(request, "keys.html", ctx)

    async def key(self, request: web.Request) -> web.StreamResponse:
        accounts = self.dash.accounts
        record = accounts.by_id.get(request.match_info["id"]) if accounts is not None else None
        if record is None:
            return self.dash.renderer.page("notfound.html", {"what": "key"}, status=404)
        [acc] = (await accounts.current_many([accounts.account_of(record)])).values()
        view = key_view(record, acc, currency=accounts.currency)
        rng = parse_range("30d", "day")
        scope = queries.Scope(key_id=record.id)
        series = await queries.series(self.dash.store, rng, scope)
        for point in series:
            point["label"] = label(point["t"], rng.step)
        by_model = await queries.breakdown(self.dash.store, rng, "model", scope=scope)
        ctx = self.dash.context(request, "keys", key=view, series=series, by_model=by_model,
                                models=sorted(self.dash.gateway.config.models),
                                writable=record.source != "config" and record.revoked_at is None,
                                topup_ok=record.revoked_at is None)
        return self.dash.render(request, "key.html", ctx)

    async def account_list(self, request: web.Request) -> web.StreamResponse:
        accounts = self.dash.accounts
        rows = []
        if accounts is not None:
            members: dict[str, list[str]] = {}
            for k in accounts.by_id.values():
                members.setdefault(k.account_id, []).append(k.name)
            live = await accounts.current_many(accounts.accounts.values())  # the fleet's balances and budgets
            if accounts.budgets is not None:
                await accounts.budgets.read(accounts=live.values())
            for acc in sorted(live.values(), key=lambda a: a.id):
                budgets = accounts.budgets.account_status(acc) if accounts.budgets is not None else []
                rows.append({"id": acc.id, "balance": acc.balance, "reserved": acc.reserved, "spent": acc.spent,
                             "unlimited": acc.unlimited, "keys": sorted(members.get(acc.id, ())),
                             "suspended": acc.policy.suspended, "budgets": budgets, "refill": acc.policy.refill,
                             "limits": acc.policy.limits.to_dict()})
        return self.dash.render(request, "accounts.html", self.dash.context(request, "keys", accounts=rows))
