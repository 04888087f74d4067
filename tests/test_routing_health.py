"""Breakers per deployment, driven by a clock the test moves (no sleeps for cooldowns)."""

from __future__ import annotations

import asyncio

import aiohttp
from routing_helpers import ask, deployments, make_upstreams, routing_config, routing_plugin, use_clock

PRICE = {"input": 1.0, "output": 2.0}
HEALTH = {"window": 30, "min_requests": 4, "error_rate": 0.5, "cooldown": 10, "half_open_probes": 1,
          "max_cooldown": 300}


async def one_deployment(start_gateway, aiohttp_server, **routing):
    ups = await make_upstreams(aiohttp_server, "a")
    config = routing_config(ups, {"m": {"deployments": deployments("a"), "price": PRICE}},
                            {"retries": 0, "health": HEALTH, **routing})
    running = await start_gateway(config)
    return ups, running, use_clock(running)


def state_of(running, name: str = "a/a-model") -> dict:
    plugin = routing_plugin(running)
    return plugin.health.snapshot(plugin.clock())[name]


async def test_a_failing_deployment_opens_after_the_threshold_and_gets_nothing_while_open(start_gateway,
                                                                                          aiohttp_server):
    ups, running, clock = await one_deployment(start_gateway, aiohttp_server)
    ups.fail("a", 503)
    async with aiohttp.ClientSession() as s:
        for i in range(4):
            status, _, body = await ask(s, running)
            assert status == 503 and body["error"]["code"] == "upstream_overloaded"
            assert state_of(running)["state"] == ("open" if i == 3 else "closed")  # not on one error
        for _ in range(10):  # open: answered at once, nothing sent upstream
            status, headers, body = await ask(s, running)
            assert status == 503 and body["error"]["code"] == "no_upstream_available"
            assert headers["Retry-After"] == "10"
        assert ups.hits("a") == 4
        clock.advance(4)
        assert (await ask(s, running))[1]["Retry-After"] == "6"


async def test_half_open_lets_the_cap_of_probes_through_and_a_success_closes_it(start_gateway, aiohttp_server):
    ups, running, clock = await one_deployment(start_gateway, aiohttp_server)
    ups.fail("a", 500)
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            await ask(s, running)
        assert state_of(running)["state"] == "open"
        clock.advance(10)
        ups.recover("a")
        ups.force("a", delay=0.3)
        probe = asyncio.create_task(ask(s, running))
        while ups.hits("a") < 5:
            await asyncio.sleep(0.01)
        assert state_of(running)["state"] == "half_open"
        refused = await ask(s, running)  # the one probe slot is taken
        assert refused[0] == 503 and refused[2]["error"]["code"] == "no_upstream_available"
        assert (await probe)[0] == 200
        assert state_of(running)["state"] == "closed"
        ups.recover("a")
        assert [(await ask(s, running))[0] for _ in range(3)] == [200, 200, 200]
    assert ups.hits("a") == 8


async def test_a_failed_probe_reopens_with_a_longer_cooldown(start_gateway, aiohttp_server):
    ups, running, clock = await one_deployment(start_gateway, aiohttp_server)
    ups.fail("a", 502)
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            await ask(s, running)
        clock.advance(10)
        assert (await ask(s, running))[2]["error"]["code"] == "upstream_error"  # the probe, failing
        assert state_of(running)["state"] == "open" and state_of(running)["retry_in"] == 20
        clock.advance(19)
        assert (await ask(s, running))[2]["error"]["code"] == "no_upstream_available"
        clock.advance(1)
        ups.recover("a")
        assert (await ask(s, running))[0] == 200
        assert state_of(running)["state"] == "closed"
    assert ups.hits("a") == 6


async def test_retry_after_keeps_it_open_longer_than_the_cooldown(start_gateway, aiohttp_server):
    ups, running, clock = await one_deployment(start_gateway, aiohttp_server)
    ups.fail("a", 429, retry_after=60)
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            status, headers, _ = await ask(s, running)
            assert status == 429 and headers["Retry-After"] == "60"
        clock.advance(10)  # the cooldown, but the upstream asked for 60 s
        status, headers, body = await ask(s, running)
        assert status == 503 and headers["Retry-After"] == "50"
        clock.advance(50)
        ups.recover("a")
        assert (await ask(s, running))[0] == 200
    assert ups.hits("a") == 5


async def test_the_clients_own_4xx_do_not_count_against_a_deployment(start_gateway, aiohttp_server):
    ups, running, clock = await one_deployment(start_gateway, aiohttp_server)
    ups.fail("a", 400)
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            assert (await ask(s, running))[0] == 400
    assert state_of(running)["state"] == "closed" and state_of(running)["failures"] == 0


async def test_errors_out_of_the_window_are_forgotten(start_gateway, aiohttp_server):
    ups, running, clock = await one_deployment(start_gateway, aiohttp_server)
    ups.fail("a", 503)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            await ask(s, running)
            clock.advance(15)  # three failures, but never four in 30 s
        await ask(s, running)
    assert state_of(running)["state"] == "closed" and ups.hits("a") == 4


async def test_traffic_moves_off_an_open_deployment_and_back_after_recovery(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    config = routing_config(ups, {"m": {"deployments": deployments("a", "b"), "price": PRICE}},
                            {"health": HEALTH})
    running = await start_gateway(config)
    clock = use_clock(running)
    ups.fail("a", 503)
    async with aiohttp.ClientSession() as s:
        for _ in range(30):  # every answer fine: a's failures are retried on b
            assert (await ask(s, running))[0] == 200
        assert state_of(running)["state"] == "open"
        failed_hits = ups.hits("a")
        assert failed_hits == 4
        for _ in range(20):
            status, headers, _ = await ask(s, running)
            assert status == 200 and headers["x-tollway-provider"] == "b" and headers["x-tollway-attempts"] == "1"
        assert ups.hits("a") == failed_hits
        ups.recover("a")
        clock.advance(10)
        for _ in range(40):
            assert (await ask(s, running))[0] == 200
    assert ups.hits("a") > failed_hits + 5  # back in rotation
