"""Upstream health where operators and plugins see it: GET /admin/upstreams, the
dashboard's errors page, and the tollway_upstream_health hook (alerts hook it)."""

from __future__ import annotations

import aiohttp
from business import ADMIN, ALL, bearer
from routing_helpers import ask, deployments, make_upstreams, routing_config, use_clock

from plugins.routing import ROUTER
from proxy import hookimpl

PRICE = {"input": 1.0, "output": 2.0}
HEALTH = {"window": 30, "min_requests": 4, "error_rate": 0.5, "cooldown": 10}


class HealthWatcher:
    """What an alerts plugin does: hears every breaker change."""

    def __init__(self) -> None:
        self.events = []

    @hookimpl
    def tollway_upstream_health(self, event):
        self.events.append((event.deployment, event.previous, event.state))


def config_for(ups, **extra) -> dict:
    deps = deployments("a", "b")
    deps[0]["rpm"] = 100
    config = routing_config(ups, {"m": {"deployments": deps, "price": PRICE}}, {"health": HEALTH, "retries": 0})
    config["providers"]["b"].pop("api_key")
    config["providers"]["b"]["api_keys"] = ["sk-secret-one", "sk-secret-two"]
    config["server"]["admin_key"] = ADMIN
    config.update(extra)
    return config


async def test_operators_see_each_deployments_health_and_plugins_hear_breakers_change(start_gateway,
                                                                                     aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    watcher = HealthWatcher()
    running = await start_gateway(config_for(ups), plugins=[watcher])
    clock = use_clock(running)
    ups.fail("a", 503)
    ups.fail("b", 503)
    async with aiohttp.ClientSession() as s:
        for _ in range(12):
            await ask(s, running)
        async with s.get(running.root + "/admin/upstreams") as r:
            assert r.status == 401
        async with s.get(running.root + "/admin/upstreams", headers=bearer("wrong")) as r:
            assert r.status == 403
        async with s.get(running.root + "/admin/upstreams", headers=bearer(ADMIN)) as r:
            assert r.status == 200
            raw = await r.text()
            data = await r.json()
    assert "sk-secret" not in raw
    by_name = {d["deployment"]: d for d in data["data"]}
    a = by_name["a/a-model"]
    assert a["state"] == "open" and a["retry_in"] == 10 and a["last_error"] == "upstream_overloaded"
    assert a["models"] == [{"model": "m", "weight": 1.0}] and a["rpm"]["limit"] == 100 and a["in_flight"] == 0
    assert by_name["b/b-model"]["state"] == "open"
    assert [p["key"] for p in data["key_pools"]["b"]] == [1, 2]
    assert sorted(watcher.events) == [("a/a-model", "closed", "open"), ("b/b-model", "closed", "open")]
    ups.recover("a")
    ups.recover("b")
    clock.advance(10)
    router = running.gw.services.get(ROUTER)
    async with aiohttp.ClientSession() as s:
        for _ in range(60):  # until a probe has gone to each (the deployment is chosen at random)
            assert (await ask(s, running))[0] == 200
            if all(d["state"] == "closed" for d in router.snapshot()):
                break
    assert sorted(watcher.events[2:]) == [("a/a-model", "half_open", "closed"), ("a/a-model", "open", "half_open"),
                                          ("b/b-model", "half_open", "closed"), ("b/b-model", "open", "half_open")]


async def test_the_dashboard_errors_page_shows_upstream_health(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    config = config_for(ups)
    config["plugins"] = {"enabled": [*ALL, "dashboard"], "ledger": {"flush_ms": 20}}
    config["keys"] = [{"name": "k", "key": "sk-test-dash-routing-1", "credits": 5.0}]
    running = await start_gateway(config)
    use_clock(running)
    ups.fail("a", 503)
    ups.fail("b", 503)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        for _ in range(12):
            await ask(s, running, headers=bearer("sk-test-dash-routing-1"))
        async with s.post(running.root + "/dashboard/login", data={"key": ADMIN}, allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(running.root + "/dashboard/errors") as r:
            assert r.status == 200
            page = await r.text()
    assert "Upstream health" in page and "a/a-model" in page and "b/b-model" in page
    assert page.count(">open<") == 2
    assert "sk-secret" not in page
