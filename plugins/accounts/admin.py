"""The admin API for keys, guarded by ``server.admin_key``.

``POST /admin/keys`` (answers the key once), ``GET /admin/keys``,
``GET|PATCH|DELETE /admin/keys/{id}``, ``POST /admin/keys/{id}/credits``.
Keys from the YAML ``keys:`` list can be read and topped up here, but are
changed and removed in the YAML (409 otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from proxy import ProxyError, json_response, read_json

from .http import build_body, check_admin, field_error, read_body, read_topup, running_accounts, topup_answer
from .specs import KeyCreate, KeyPatch, SpecError, create_args, patch_changes
from .views import account_view, key_view

if TYPE_CHECKING:
    from proxy import Gateway

    from .book import Accounts
    from .model import KeyRecord


class AdminKeys:
    """The key handlers. ``check`` authorises a request (default: the admin
    key header); the dashboard mounts the same handlers behind its session
    and CSRF guard, so both change keys the same way."""

    def __init__(self, gateway: Gateway, check: Callable[[Gateway, web.Request], None] = check_admin) -> None:
        self.gateway = gateway
        self.check = check

    @property
    def accounts(self) -> Accounts:
        return running_accounts(self.gateway)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/admin/keys", self.create),
            web.get("/admin/keys", self.list),
            web.get("/admin/keys/{id}", self.show),
            web.patch("/admin/keys/{id}", self.update),
            web.delete("/admin/keys/{id}", self.revoke),
            web.post("/admin/keys/{id}/credits", self.topup),
        ]

    def _key(self, request: web.Request, *, writable: bool = False) -> KeyRecord:
        self.check(self.gateway, request)
        kid = request.match_info["id"]
        record = self.accounts.by_id.get(kid)
        if record is None:
            raise ProxyError(404, f"no key with id {kid!r}", code="key_not_found")
        if writable and record.source == "config":
            raise ProxyError(409, f"key {kid!r} is defined in the config file's keys: list; change it there",
                             code="config_key")
        if writable and record.revoked_at is not None:
            raise ProxyError(409, f"key {kid!r} has been revoked", code="key_revoked")
        return record

    async def _view(self, record: KeyRecord) -> dict:
        accounts = self.accounts
        [acc] = (await accounts.current_many([accounts.account_of(record)])).values()
        return key_view(record, acc, currency=accounts.currency)

    async def create(self, request: web.Request) -> web.Response:
        self.check(self.gateway, request)
        spec, _ = await read_body(request, KeyCreate)
        try:
            args = create_args(spec, self.gateway.config.models)
        except SpecError as exc:
            raise field_error(str(exc)) from None
        record, plain = await self.accounts.create_key(**args)
        return json_response({**await self._view(record), "key": plain}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        self.check(self.gateway, request)
        now = time.time()
        accounts = self.accounts
        live = await accounts.current_many(accounts.account_of(k) for k in accounts.by_id.values())
        data = [key_view(k, live[k.account_id], now, accounts.currency) for k in accounts.by_id.values()]
        return json_response({"object": "list", "data": data})

    async def show(self, request: web.Request) -> web.Response:
        record = self._key(request)
        return json_response({**await self._view(record), "budget_status": await self.accounts.budget_status(record)})

    async def update(self, request: web.Request) -> web.Response:
        record = self._key(request, writable=True)
        body, _ = await read_json(request, 1024 * 1024)
        try:
            if "credits" in body:  # before the generic "unknown key"
                raise SpecError("credits: add credits with POST /admin/keys/{id}/credits")
            changes = patch_changes(build_body(KeyPatch, body), body, self.gateway.config.models)
        except SpecError as exc:
            raise field_error(str(exc)) from None
        updated = await self.accounts.update_key(record.id, changes) if changes else record
        return json_response(await self._view(updated))

    async def revoke(self, request: web.Request) -> web.Response:
        record = self._key(request, writable=True)
        updated = await self.accounts.revoke_key(record.id)
        return json_response({**await self._view(updated), "revoked": True})

    async def topup(self, request: web.Request) -> web.Response:
        record = self._key(request)
        if record.revoked_at is not None:
            raise ProxyError(409, f"key {record.id!r} has been revoked", code="key_revoked")
        micro = await read_topup(request)
        acc = await self.accounts.topup(record.id, micro)
        [acc] = (await self.accounts.current_many([acc])).values()
        return json_response(topup_answer(record.id, micro, account_view(acc, self.accounts.currency)))
