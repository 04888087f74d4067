"""The admin API for customers' own upstream keys, guarded by ``server.admin_key``.

``PUT /admin/keys/{id}/upstream_keys/{provider}`` with ``{"api_key": "..."}``
stores (or replaces: key rotation) a key's own key for a provider; the answer shows
its hint (last 4 characters), never the key, and ``replaced``/``replaced_hint``.
``GET /admin/keys/{id}/upstream_keys`` lists them (hints),
``DELETE /admin/keys/{id}/upstream_keys/{provider}`` removes one. The same
under ``/admin/accounts/{id}/...`` for a key shared by every key of an account.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from proxy import ProxyError, bad_request, check_admin, json_response, read_json

from ..accounts import ACCOUNTS
from .vault import Owner, Vault

if TYPE_CHECKING:
    from proxy import Gateway

__all__ = ["AdminUpstreamKeys", "check_upstream_key", "owner_problem", "provider_problem"]

# What an API key looks like on the wire: printable ASCII without spaces (no header can be smuggled in).
KEY_TEXT = re.compile(r"[\x21-\x7e]{8,4096}")


def check_upstream_key(value: object) -> str:
    """The key, or a 400 that says what is wrong with it (without repeating it)."""
    if not isinstance(value, str):
        raise bad_request("api_key: send the upstream API key as a JSON string", param="api_key",
                          code="invalid_upstream_key")
    key = value.strip()
    if not KEY_TEXT.fullmatch(key):
        raise bad_request("api_key: an upstream API key is 8 to 4096 printable characters without spaces",
                          param="api_key", code="invalid_upstream_key")
    return key


def provider_problem(gateway: Gateway, provider: str) -> str | None:
    config = gateway.config.providers.get(provider)
    if config is None:
        known = ", ".join(n for n, p in gateway.config.providers.items() if p.kind != "mock")
        return f"no provider named {provider!r} in the config (providers: {known or 'none'})"
    if config.kind == "mock":
        return f"provider {provider!r} is the built-in mock: it takes no API key"
    return None


def owner_problem(gateway: Gateway, owner: Owner) -> str | None:
    accounts = gateway.services.get(ACCOUNTS)
    if accounts is None:
        return "the gateway is starting or stopping"
    if owner.kind == "key":
        record = accounts.by_id.get(owner.id)
        if record is None:
            return f"no key with id {owner.id!r}"
        if record.revoked_at is not None:
            return f"key {owner.id!r} has been revoked"
    elif owner.id not in accounts.accounts:
        return f"no account with id {owner.id!r}"
    return None


class AdminUpstreamKeys:
    def __init__(self, gateway: Gateway, vault: Callable[[], Vault | None]) -> None:
        self.gateway = gateway
        self._vault = vault  # opened at start-up, after the routes are made

    @property
    def vault(self) -> Vault:
        vault = self._vault()
        if vault is None:
            raise ProxyError(503, "the gateway is starting or stopping", code="not_ready")
        return vault

    def routes(self) -> list[web.RouteDef]:
        out = []
        for kind, base in (("key", "/admin/keys/{id}/upstream_keys"),
                           ("account", "/admin/accounts/{id}/upstream_keys")):
            out += [web.get(base, self._handler(self.list, kind)),
                    web.put(base + "/{provider}", self._handler(self.put, kind)),
                    web.delete(base + "/{provider}", self._handler(self.remove, kind))]
        return out

    def _handler(self, fn: Callable, kind: str) -> Callable:
        async def handle(request: web.Request) -> web.Response:
            check_admin(self.gateway, request)
            owner = Owner(kind, request.match_info["id"])
            if (problem := owner_problem(self.gateway, owner)) is not None:
                raise ProxyError(404, problem, code=f"{kind}_not_found")
            return await fn(request, owner)

        return handle

    async def list(self, request: web.Request, owner: Owner) -> web.Response:
        return json_response({"object": "list", "data": [k.view() for k in self.vault.keys_of(owner)]})

    async def put(self, request: web.Request, owner: Owner) -> web.Response:
        provider = request.match_info["provider"]
        if (problem := provider_problem(self.gateway, provider)) is not None:
            raise ProxyError(404, problem, code="provider_not_found")
        body, _ = await read_json(request, 64 * 1024)
        unknown = sorted(set(body) - {"api_key"})
        if unknown:
            raise bad_request(f"{unknown[0]}: unknown field (send only api_key)", param=unknown[0])
        key = check_upstream_key(body.get("api_key"))
        before = self.vault.listed.get((str(owner), provider))
        stored = await self.vault.put(owner, provider, key)
        # Rotation is a PUT over the old key: the answer says it replaced one, and whose hint it had.
        return json_response({**stored.view(), "replaced": before is not None,
                              "replaced_hint": None if before is None else before.hint})

    async def remove(self, request: web.Request, owner: Owner) -> web.Response:
        provider = request.match_info["provider"]
        if not await self.vault.remove(owner, provider):
            raise ProxyError(404, f"{owner.kind} {owner.id!r} has no upstream key for {provider!r}",
                             code="upstream_key_not_found")
        return json_response({"owner": owner.kind, "id": owner.id, "provider": provider, "deleted": True})
