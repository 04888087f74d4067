"""``GET /admin/upstreams``: every deployment's health, load and limits, and the key pools
(by position: keys are never shown). Guarded by ``server.admin_key``."""

from __future__ import annotations

import hmac

from aiohttp import web

from proxy import Gateway, ProxyError, json_response

from .router import ROUTER

__all__ = ["upstreams_routes"]


def _check_admin(gateway: Gateway, request: web.Request) -> None:
    admin = gateway.config.server.admin_key or ""
    if not admin:
        raise ProxyError(403, "the admin API is disabled: set server.admin_key to use it", code="admin_disabled")
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("X-API-Key")
    if not given:
        raise ProxyError(401, "missing admin key: send 'Authorization: Bearer ADMIN_KEY'", code="missing_admin_key")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), admin.encode()):
        raise ProxyError(403, "invalid admin key", code="invalid_admin_key")


def upstreams_routes(gateway: Gateway) -> list[web.RouteDef]:
    async def upstreams(request: web.Request) -> web.Response:
        _check_admin(gateway, request)
        router = gateway.services.get(ROUTER)
        if router is None:
            raise ProxyError(503, "the gateway is starting", code="not_ready")
        return json_response({"object": "list", "data": router.snapshot(), "key_pools": router.key_pools()})

    return [web.get("/admin/upstreams", upstreams)]
