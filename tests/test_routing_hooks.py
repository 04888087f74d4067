"""The hooks routing stands on, used by a third-party plugin: tollway_attempt and tollway_retry."""

from __future__ import annotations

import aiohttp
from routing_helpers import ask, make_upstreams, routing_config

from plugins.routing import ROUTER
from proxy import hookimpl

PRICE = {"input": 1.0, "output": 2.0}


class AttemptLog:
    """Hears every upstream attempt (tollway_attempt), as a health or metrics plugin would."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, str | None]] = []

    @hookimpl
    async def tollway_attempt(self, call, route, error):
        self.attempts.append((route.provider.name, error.code if error else None))


class RetryElsewhere:
    """A plugin's own failover (tollway_retry): after a failure of model ``m``, try ``spare`` once."""

    def __init__(self, gateway_routes) -> None:
        self.routes = gateway_routes

    @hookimpl(tryfirst=True)
    async def tollway_retry(self, call, error):
        if call.upstream_attempts == 1 and error.status >= 500:
            return self.routes["spare"]
        return None


async def test_a_plugin_hears_every_attempt_and_can_choose_the_retry(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.fail("a", 500)
    log = AttemptLog()
    holder: dict = {}
    retry = RetryElsewhere(holder)
    config = routing_config(ups, {"m": {"provider": "a", "price": PRICE}, "spare": {"provider": "b", "price": PRICE}},
                            {"retries": 0})  # the built-in would not retry: the plugin's hook does
    running = await start_gateway(config, plugins=[log, retry])
    holder["spare"] = running.gw.services.get(ROUTER).tables["spare"].entries[0].route
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await ask(s, running)
    assert status == 200
    assert log.attempts == [("a", "upstream_error"), ("b", None)]
    assert headers["x-tollway-model"] == "spare" and headers["x-tollway-attempts"] == "2"


async def test_without_a_retry_route_the_first_error_is_the_answer(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a")
    ups.fail("a", 500)
    log = AttemptLog()
    running = await start_gateway(routing_config(ups, {"m": {"provider": "a", "price": PRICE}}), plugins=[log])
    async with aiohttp.ClientSession() as s:
        status, headers, body = await ask(s, running)
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert log.attempts == [("a", "upstream_error")]
    assert headers["x-tollway-attempts"] == "1"
