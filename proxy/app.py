"""Wiring only: a Gateway -> an aiohttp Application."""

from __future__ import annotations

from aiohttp import HttpVersion11, web

from .accesslog import AccessLog
from .errors import ProxyError, dialect_of, error_middleware, error_response
from .gateway import Gateway
from .logs import redact
from .reload import RELOADER_KEY, Reloader
from .routes import GATEWAY_KEY, ModelRoutes, fallback


def make_app(gateway: Gateway, *, access_log: bool = True, workers_parent: int | None = None) -> web.Application:
    """The app serving ``gateway``; its start-up starts the gateway, its clean-up closes it.
    ``workers_parent``: the pid of the ``--workers`` parent, told when this worker reloads."""
    server = gateway.config.server
    app = web.Application(client_max_size=max(server.max_body_bytes, server.max_upload_bytes) + 1,
                          middlewares=[error_middleware])
    app[GATEWAY_KEY] = gateway
    app[RELOADER_KEY] = reloader = Reloader(gateway, workers_parent)
    routes = ModelRoutes(gateway).routes() + reloader.routes()
    for extra in gateway.pm.hook.tollway_routes(gateway=gateway):
        routes.extend(extra or ())
    app.add_routes([web.RouteDef(r.method, r.path, r.handler, {"expect_handler": expect_continue, **r.kwargs})
                    if isinstance(r, web.RouteDef) else r
                    for r in under_base_path(routes, server.base_path, server.keep_v1)])
    app.router.add_route("*", "/{tail:.*}", fallback, expect_handler=expect_continue)

    if access_log and server.access_log != "off":
        gateway.access_log = AccessLog(server.access_log)

    async def start(app: web.Application) -> None:
        await gateway.start()
        if gateway.access_log is not None:
            gateway.access_log.start()

    async def stop(app: web.Application) -> None:
        if gateway.access_log is not None:
            await gateway.access_log.stop()
        await gateway.close()

    async def wind_down(app: web.Application) -> None:
        # After the listener closed: in-flight calls get shutdown_timeout, then are stopped and billed.
        await gateway.inflight.wind_down(gateway.config.server.shutdown_timeout)  # the reloaded value

    app.on_startup.append(start)
    app.on_shutdown.append(wind_down)
    app.on_cleanup.append(stop)
    return app


def under_base_path(routes: list, base: str | None, keep_v1: bool) -> list:
    """The routes, with every ``/v1`` one also (or, without ``keep_v1``, only) served
    under ``server.base_path``: ``/v1/chat/completions`` -> ``/api/v1/chat/completions``."""
    if not base:
        return routes
    taken = {(r.method, r.path) for r in routes if isinstance(r, web.RouteDef)}
    out = []
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(route, web.RouteDef) and path is not None and (path == "/v1" or path.startswith("/v1/")):
            if (route.method, base + path[3:]) not in taken:  # a route of the gateway's own wins (/api/models)
                out.append(web.RouteDef(route.method, base + path[3:], route.handler, route.kwargs))
            if keep_v1:
                out.append(route)
        else:
            out.append(route)
    return out


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """A request's ``Expect`` header, as aiohttp's default handler takes it (``100-continue``
    on HTTP/1.1 is answered at once), and anything else refused with 417 in the error shape.
    aiohttp's own refusal quotes the header in a text it encodes as UTF-8: a byte that is not
    UTF-8 there raised, and the client got a 500 (and the log a traceback)."""
    expect = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return None
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # (the answer's head is still to come: as aiohttp's handler)
        return None
    err = ProxyError(417, f"Expect: {redact(expect, limit=60)!r} is not supported; send no Expect header, "
                          "or Expect: 100-continue", code="expectation_failed")
    resp = error_response(err, dialect_of(request))
    resp.force_close()
    return resp
