"""Wiring only: a Gateway -> an aiohttp Application."""

from __future__ import annotations

from aiohttp import web

from .accesslog import AccessLog
from .errors import error_middleware
from .gateway import Gateway
from .routes import GATEWAY_KEY, ModelRoutes, fallback


def make_app(gw: Gateway, *, access_log: bool = True) -> web.Application:
    """The app serving ``gw``; its start-up starts the gateway, its clean-up closes it."""
    server = gw.config.server
    app = web.Application(client_max_size=server.max_body_bytes + 1, middlewares=[error_middleware])
    app[GATEWAY_KEY] = gw
    routes = ModelRoutes(gw).routes()
    for extra in gw.pm.hook.tollway_routes(gateway=gw):
        routes.extend(extra or ())
    app.add_routes(routes)
    app.router.add_route("*", "/{tail:.*}", fallback)

    if access_log and server.access_log != "off":
        gw.access_log = AccessLog(server.access_log)

    async def start(app: web.Application) -> None:
        await gw.start()
        if gw.access_log is not None:
            gw.access_log.start()

    async def stop(app: web.Application) -> None:
        if gw.access_log is not None:
            await gw.access_log.stop()
        await gw.close()

    async def wind_down(app: web.Application) -> None:
        # After the listener closed: in-flight calls get shutdown_timeout, then are stopped and billed.
        await gw.inflight.wind_down(server.shutdown_timeout)

    app.on_startup.append(start)
    app.on_shutdown.append(wind_down)
    app.on_cleanup.append(stop)
    return app
