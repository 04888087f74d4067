"""The admin key: ``server.admin_key`` guards ``/admin/*`` (the core's and plugins')."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from .errors import ProxyError

if TYPE_CHECKING:
    from aiohttp import web

    from .gateway import Gateway

__all__ = ["admin_key_from_headers", "check_admin"]


def admin_key_from_headers(request: web.Request) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``: never the query
    string (a URL lands in access logs, proxies' logs and browser history)."""
    headers = request.headers
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    given = headers.get("X-API-Key")
    if given and given.strip():
        return given.strip()
    return None


def check_admin(gateway: Gateway, request: web.Request) -> None:
    """401 without a key, 403 with a wrong one (compared in constant time) or when
    ``server.admin_key`` is empty (the admin API is off)."""
    admin = gateway.config.server.admin_key or ""
    if not admin:
        raise ProxyError(403, "the admin API is disabled: set server.admin_key (e.g. admin_key: "
                              "${TOLLWAY_ADMIN_KEY}) to use it", code="admin_disabled")
    given = admin_key_from_headers(request)
    if given is None:
        where = " (the query string is not read for the admin key)" if "api_key" in request.query else ""
        raise ProxyError(401, f"missing admin key: send 'Authorization: Bearer ADMIN_KEY' or 'X-API-Key: "
                              f"ADMIN_KEY'{where}", code="missing_admin_key")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), admin.encode()):
        raise ProxyError(403, "invalid admin key", code="invalid_admin_key")
