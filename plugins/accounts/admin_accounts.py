"""The admin API for credit accounts, guarded by ``server.admin_key``.

``GET /admin/accounts``, ``POST /admin/accounts`` (``id``, ``credits``,
``budgets``, ``limits``, ``refill``, ``suspended``), ``GET|PATCH
/admin/accounts/{id}`` and ``POST /admin/accounts/{id}/credits``. Accounts
from the YAML ``accounts:`` section can be read and topped up here, but are
changed in the YAML (409 otherwise), as keys are. The checks and changes are
``account_ops.py``'s, shared with ``tollway accounts``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy import ProxyError, json_response, read_json

from .account_ops import (
    AccountExists,
    AccountNotFound,
    ConfigAccount,
    account_document,
    change_account,
    create_account,
    find_account,
    top_up_account,
)
from .http import check_admin, field_error, running_accounts, topup_answer
from .specs import SpecError

if TYPE_CHECKING:
    from proxy import Gateway

    from .book import Accounts
    from .model import Account


def _answer(exc: Exception) -> ProxyError:
    """The admin API's answer to what an account operation raised."""
    if isinstance(exc, SpecError):
        return field_error(str(exc))
    if isinstance(exc, AccountNotFound):
        return ProxyError(404, str(exc), code="account_not_found")
    if isinstance(exc, ConfigAccount):
        return ProxyError(409, str(exc), code="config_account")
    return ProxyError(409, f"account {exc.args[0]!r} exists already", code="account_exists")


ACCOUNT_ERRORS = (SpecError, AccountNotFound, ConfigAccount, AccountExists)


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

    async def view(self, acc: Account) -> dict[str, Any]:
        return (await self.documents([acc]))[0]

    async def documents(self, accs: Iterable[Account]) -> list[dict[str, Any]]:
        """The accounts' documents, by id, with their balances and budgets as the fleet has them."""
        book = self.accounts
        live = await book.current_many(accs)
        if book.budgets is not None:
            await book.budgets.read(accounts=live.values())
        return [account_document(book, live[aid]) for aid in sorted(live)]

    async def list(self, request: web.Request) -> web.Response:
        check_admin(self.gateway, request)
        data = await self.documents(self.accounts.accounts.values())
        return json_response({"object": "list", "data": data})

    async def show(self, request: web.Request) -> web.Response:
        check_admin(self.gateway, request)
        try:
            acc = find_account(self.accounts, request.match_info["id"])
        except ACCOUNT_ERRORS as exc:
            raise _answer(exc) from None
        return json_response(await self.view(acc))

    async def create(self, request: web.Request) -> web.Response:
        check_admin(self.gateway, request)
        body, _ = await read_json(request, 1024 * 1024)
        try:
            acc = await create_account(self.accounts, body)
        except ACCOUNT_ERRORS as exc:
            raise _answer(exc) from None
        return json_response(await self.view(acc), status=201)

    async def update(self, request: web.Request) -> web.Response:
        check_admin(self.gateway, request)
        aid = request.match_info["id"]
        try:
            find_account(self.accounts, aid, writable=True)  # 404 / 409 before the body is read
        except ACCOUNT_ERRORS as exc:
            raise _answer(exc) from None
        body, _ = await read_json(request, 1024 * 1024)
        try:
            acc = await change_account(self.accounts, aid, body)
        except ACCOUNT_ERRORS as exc:
            raise _answer(exc) from None
        return json_response(await self.view(acc))

    async def topup(self, request: web.Request) -> web.Response:
        check_admin(self.gateway, request)
        aid = request.match_info["id"]
        try:
            find_account(self.accounts, aid)  # 404 before the body is read
        except ACCOUNT_ERRORS as exc:
            raise _answer(exc) from None
        body, _ = await read_json(request, 1024 * 1024)
        try:
            acc, micro = await top_up_account(self.accounts, aid, body)
        except ACCOUNT_ERRORS as exc:
            raise _answer(exc) from None
        return json_response(topup_answer(acc.id, micro, await self.view(acc)))
