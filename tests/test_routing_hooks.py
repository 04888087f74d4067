"""The hooks routing stands on, used by a third-party plugin: tollway_attempt, tollway_retry and
tollway_reroute."""

from __future__ import annotations

import aiohttp
from routing_helpers import ask, make_upstreams, routing_config

from plugins.routing import ROUTER
from proxy import ProxyError, hookimpl

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


class RefuseProvider:
    """Refuses every retry onto one provider (tollway_reroute), as a plugin guarding money would."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    async def tollway_reroute(self, call, previous):
        self.seen.append((previous.provider.name, call.route.provider.name))
        if call.route.provider.name == self.provider:
            raise ProxyError(402, f"not on {self.provider}", code="refused_here")


async def test_a_refused_retry_route_is_passed_over_for_the_next_one(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b", "c")
    ups.fail("a", 503)
    refuse = RefuseProvider("b")
    models = {"m": {"provider": "a", "price": PRICE, "fallbacks": ["via-b", "via-c"]},
              "via-b": {"provider": "b", "price": PRICE}, "via-c": {"provider": "c", "price": PRICE}}
    running = await start_gateway(routing_config(ups, models), plugins=[refuse])
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await ask(s, running)
        assert status == 200 and headers["x-tollway-provider"] == "c" and headers["x-tollway-attempts"] == "2"
        assert refuse.seen == [("a", "b"), ("a", "c")] and ups.all_hits() == {"a": 1, "b": 0, "c": 1}
        ups.fail("c", 503)
        status, headers, body = await ask(s, running)
    # a failed, b was refused, c failed: the last failure is the answer
    assert status == 503 and body["error"]["code"] == "upstream_overloaded", body
    assert ups.all_hits() == {"a": 2, "b": 0, "c": 2}


async def test_when_the_last_route_left_is_refused_the_refusal_is_the_answer(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.fail("a", 503)
    models = {"m": {"provider": "a", "price": PRICE, "fallbacks": ["via-b"]},
              "via-b": {"provider": "b", "price": PRICE}}
    running = await start_gateway(routing_config(ups, models), plugins=[RefuseProvider("b")])
    async with aiohttp.ClientSession() as s:
        status, headers, body = await ask(s, running)
    assert status == 402 and body["error"] == {"message": "not on b", "type": "insufficient_quota", "param": None,
                                               "code": "refused_here"}
    assert headers["x-tollway-model"] == "m" and headers["x-tollway-attempts"] == "1"
    assert ups.all_hits() == {"a": 1, "b": 0}
