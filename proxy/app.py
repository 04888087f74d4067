"""Wiring only: a Gateway -> an aiohttp Application."""

from __future__ import annotations

from aiohttp import web

from .accesslog import AccessLog
from .errors import error_middleware
from .gateway import Gateway
from .routes import GATEWAY_KEY, ModelRoutes, fallback


def make_app(gateway: Gateway, *, access_log: bool = True) -> web.Application:
    """The app serving ``gateway``; its start-up starts the gateway, its clean-up closes it."""
    server = gateway.config.server
    app = web.Application(client_max_size=max(server.max_body_bytes, server.max_upload_bytes) + 1,
                          middlewares=[error_middleware])
    app[GATEWAY_KEY] = gateway
    routes = ModelRoutes(gateway).routes()
    for extra in gateway.pm.hook.tollway_routes(gateway=gateway):
        routes.extend(extra or ())
    app.add_routes(routes)
    app.router.add_route("*", "/{tail:.*}", fallback)

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
        await gateway.inflight.wind_down(server.shutdown_timeout)

    app.on_startup.append(start)
    app.on_shutdown.append(wind_down)
    app.on_cleanup.append(stop)
    return app
