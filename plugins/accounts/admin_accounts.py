"""The admin API for credit accounts, guarded by ``server.admin_key``.

``GET /admin/accounts``, ``POST /admin/accounts`` (``id``, ``credits``,
``budgets``, ``limits``, ``refill``, ``suspended``), ``GET|PATCH
/admin/accounts/{id}`` and ``POST /admin/accounts/{id}/credits``. Accounts
from the YAML ``accounts:`` section can be read and topped up here, but are
changed in the YAML (409 otherwise), as keys are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy import ProxyError, json_response, read_json

from .book import AccountExists
from .http import build_body, check_admin, field_error, read_body, read_topup, running_accounts, topup_answer
from .options import NAME_RE
from .specs import AccountCreate, AccountPatch, SpecError, account_policy, credits_micro
from .views import account_view

if TYPE_CHECKING:
    from proxy import Gateway

    from .book import Accounts
    from .model import Account


class AdminAccounts:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def accounts(self) -> Accounts:
        return running_accounts(self.gateway)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/admin/accounts", self.list), web.post("/admin/accounts", self.create),
                web.get("/admin/accounts/{id}", self.show), web.patch("/admin/accounts/{id}", self.update),
                web.post("/admin/accounts/{id}/credits", self.topup)]

    def _account(self, request: web.Request, *, writable: bool = False) -> Account:
        check_admin(self.gateway, request)
        aid = request.match_info["id"]
        acc = self.accounts.accounts.get(aid)
        if acc is None:
            raise ProxyError(404, f"no account with id {aid!r}", code="account_not_found")
        if writable and acc.source == "config":
            raise ProxyError(409, f"account {aid!r} is defined in the config file's accounts: section; "
                                  "change it there", code="config_account")
        return acc

    def view(self, acc: Account) -> dict[str, Any]:
        book = self.accounts
        keys = sorted(k.id for k in book.by_id.values() if k.account_id == acc.id)
        budgets = book.budgets.account_status(acc) if book.budgets is not None else []
        return {"object": "account", **account_view(acc, book.currency), **acc.policy.to_dict(), "source": acc.source,
                "suspended": acc.policy.suspended, "keys": keys, "budget_status": budgets}

    async def list(self, request: web.Request) -> web.Response:
        check_admin(self.gateway, request)
        data = [self.view(a) for a in sorted(self.accounts.accounts.values(), key=lambda a: a.id)]
        return json_response({"object": "list", "data": data})

    async def show(self, request: web.Request) -> web.Response:
        return json_response(self.view(self._account(request)))

    async def create(self, request: web.Request) -> web.Response:
        check_admin(self.gateway, request)
        spec, _ = await read_body(request, AccountCreate)
        if not NAME_RE.match(spec.id):
            raise field_error("id: use 1-64 letters, digits, '_', '.' or '-'")
        try:
            credits = credits_micro(spec.credits, "credits")
            policy = account_policy(spec)
        except SpecError as exc:
            raise field_error(str(exc)) from None
        try:
            acc = await self.accounts.create_account(spec.id, credits=credits, policy=policy)
        except AccountExists:
            raise ProxyError(409, f"account {spec.id!r} exists already", code="account_exists") from None
        return json_response(self.view(acc), status=201)

    async def update(self, request: web.Request) -> web.Response:
        acc = self._account(request, writable=True)
        body, _ = await read_json(request, 1024 * 1024)
        try:
            if "credits" in body:
                raise SpecError("credits: add credits with POST /admin/accounts/{id}/credits")
            policy = account_policy(build_body(AccountPatch, body), body, acc.policy)
        except SpecError as exc:
            raise field_error(str(exc)) from None
        if policy != acc.policy:
            acc = await self.accounts.set_policy(acc.id, policy)
        return json_response(self.view(acc))

    async def topup(self, request: web.Request) -> web.Response:
        acc = self._account(request)
        micro = await read_topup(request)
        acc = await self.accounts.add_credits(acc.id, micro)
        return json_response(topup_answer(acc.id, micro, self.view(acc)))
