"""Dispatch of the routes at fixed paths: a request for one goes straight to its handler.

aiohttp's ``Application._handle`` resolves every request through the router (a walk of its
resource index, a new ``UrlMappingMatchInfo``, ``add_app``, ``freeze``), then runs the
middleware chain (its ``_fix_request_current_app``, then ``error_middleware``): ~5 µs a
request, most of what the model routes pay between the parsed request and the handler.

``dispatcher(app)`` asks the router, once at start-up, what it resolves each route of a
fixed path (no ``{}`` part, one method) to, and keeps the routes it resolves to themselves:
``(method, path) -> (handler, match info)``. A request whose method and raw target (no query,
no escapes: the exact path) are in that table, and that has no ``Expect`` header, gets that
route's match info (one frozen object per route, shared: the routes have no match values
to hold) and goes through ``error_middleware`` to the handler, as ``_handle`` would send it;
anything else goes to ``_handle`` unchanged. With middlewares other than
``error_middleware``, domain sub-applications or ``on_response_prepare`` receivers, the
table is empty (everything goes through ``_handle``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import MatchedSubAppResource, PlainResource, UrlMappingMatchInfo
from yarl import URL

from .errors import error_middleware

__all__ = ["dispatcher", "fixed_routes"]

#: Off: every request through aiohttp's ``_handle`` (the tests compare both ways).
ENABLED = True

_PLAIN = re.compile(r"/[A-Za-z0-9._~/-]*")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def fixed_routes(app: web.Application) -> dict[tuple[str, str], tuple[Handler, UrlMappingMatchInfo]]:
    """``(method, path) -> (handler, match info)`` of the routes at fixed paths that the
    router resolves to themselves (see the module docstring); empty when the app has more
    than ``error_middleware`` to run or sub-applications matched by domain."""
    router = app.router
    if tuple(app.middlewares) != (error_middleware,) or app.on_response_prepare:
        return {}
    if any(isinstance(resource, MatchedSubAppResource) for resource in router.resources()):
        return {}
    table: dict[tuple[str, str], tuple[Handler, UrlMappingMatchInfo]] = {}
    for route in router.routes():
        resource = route.resource
        if not isinstance(resource, PlainResource) or route.method == hdrs.METH_ANY:
            continue
        path = resource.canonical
        if (route.method, path) in table or not _PLAIN.fullmatch(path):
            continue  # (a path a client sends escaped never equals its raw target)
        # What the router answers for exactly this method and path (a stand-in with the two
        # attributes resolving reads).
        match = await router.resolve(SimpleNamespace(method=route.method, rel_url=URL(path)))  # type: ignore[arg-type]
        if match.route is not route or len(match) or match.http_exception is not None or match.apps:
            continue
        match.add_app(app)
        match.freeze()
        table[(route.method, path)] = (route.handler, match)
    return table


async def dispatcher(app: web.Application) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The server's request handler for ``app``: ``app._handle``, with the routes at fixed
    paths dispatched directly (``fixed_routes``)."""
    handle = app._handle
    table = await fixed_routes(app) if ENABLED else {}
    if not table:
        return handle
    lookup = table.get

    def dispatch(request: web.Request) -> Awaitable[web.StreamResponse]:
        # (a plain function returning the handler's awaitable: aiohttp awaits it, one coroutine less)
        hit: Any = lookup((request.method, request.raw_path))
        if hit is None or request.headers.get(hdrs.EXPECT):
            return handle(request)
        request._match_info = hit[1]
        return error_middleware(request, hit[0])

    return dispatch
