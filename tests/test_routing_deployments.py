"""Deployments and strategies, through the real server to mock upstreams that fail on command."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from routing_helpers import ask, deployments, make_upstreams, routing_config, use_clock

PRICE = {"input": 1.0, "output": 2.0}


async def test_weighted_deployments_share_by_weight_and_say_where_they_went(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    running = await start_gateway(routing_config(ups, {"m": {"deployments": deployments(("a", 3), ("b", 1)),
                                                             "price": PRICE}}))
    seen = {"a": 0, "b": 0}
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            status, headers, body = await ask(s, running)
            assert status == 200
            seen[headers["x-tollway-provider"]] += 1
            assert headers["x-tollway-model"] == "m" and headers["x-tollway-attempts"] == "1"
            assert body["model"] == f"{headers['x-tollway-provider']}-model"  # the deployment's upstream name
    assert seen == ups.all_hits()
    assert 0.63 <= seen["a"] / 300 <= 0.87  # 0.75 expected; about 5 standard deviations either side


async def test_a_weight_of_zero_gets_no_new_requests(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    running = await start_gateway(routing_config(ups, {"m": {"deployments": deployments(("a", 1), ("b", 0)),
                                                             "price": PRICE}}))
    async with aiohttp.ClientSession() as s:
        for _ in range(40):
            assert (await ask(s, running))[0] == 200
    assert ups.all_hits() == {"a": 40, "b": 0}


async def test_every_deployment_drained_is_503_with_retry_after(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a")
    running = await start_gateway(routing_config(ups, {"m": {"deployments": deployments(("a", 0)),
                                                             "price": PRICE}}))
    async with aiohttp.ClientSession() as s:
        status, headers, body = await ask(s, running)
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert body["error"]["code"] == "no_upstream_available"
    assert "drained" in body["error"]["message"]
    assert ups.hits("a") == 0


async def test_least_busy_sends_to_the_idle_deployment(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.force("a", delay=0.4)
    ups.force("b", delay=0.4)
    running = await start_gateway(routing_config(ups, {"m": {"deployments": deployments("a", "b"),
                                                             "strategy": "least_busy", "price": PRICE}}))
    async with aiohttp.ClientSession() as s:
        first = asyncio.create_task(ask(s, running))
        while sum(ups.all_hits().values()) < 1:
            await asyncio.sleep(0.01)
        busy = next(n for n, h in ups.all_hits().items() if h)
        second = await ask(s, running)  # while the first is in flight
        assert second[1]["x-tollway-provider"] != busy
        assert (await first)[1]["x-tollway-provider"] == busy


async def test_latency_prefers_the_fast_deployment(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "slow", "fast")
    ups.force("slow", delay=0.15)
    running = await start_gateway(routing_config(ups, {"m": {"deployments": deployments("slow", "fast"),
                                                             "price": PRICE}}, {"strategy": "latency"}))
    async with aiohttp.ClientSession() as s:
        for _ in range(12):
            assert (await ask(s, running))[0] == 200
    assert ups.hits("slow") <= 1  # measured once at most, then avoided
    assert ups.hits("fast") >= 11


async def test_cheapest_takes_the_lowest_deployment_price_and_fails_over(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "dear", "cheap")
    deps = deployments("dear", "cheap")
    deps[0]["price"] = {"input": 5, "output": 15}
    deps[1]["price"] = {"input": 0.5, "output": 1.5}
    running = await start_gateway(routing_config(ups, {"m": {"deployments": deps, "strategy": "cheapest",
                                                             "price": PRICE}}))
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            assert (await ask(s, running))[0] == 200
        assert ups.all_hits() == {"dear": 0, "cheap": 10}
        ups.fail("cheap", 503)
        status, headers, _ = await ask(s, running)
    assert status == 200
    assert headers["x-tollway-provider"] == "dear" and headers["x-tollway-attempts"] == "2"


async def test_per_deployment_rpm_moves_the_rest_of_the_minute_elsewhere(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    deps = deployments(("a", 1000), ("b", 0.001))
    deps[0]["rpm"] = 3
    running = await start_gateway(routing_config(ups, {"m": {"deployments": deps, "price": PRICE}}))
    clock = use_clock(running)
    clock.now = 60 * 1000  # the start of a minute
    async with aiohttp.ClientSession() as s:
        providers = [(await ask(s, running))[1]["x-tollway-provider"] for _ in range(5)]
        assert providers[:3] == ["a", "a", "a"] and providers[3:] == ["b", "b"]
        clock.advance(60)
        assert (await ask(s, running))[1]["x-tollway-provider"] == "a"


async def test_a_key_pool_moves_to_the_next_key_on_429(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "pool")
    config = routing_config(ups, {"m": {"provider": "pool", "price": PRICE}})
    pool = config["providers"]["pool"]
    del pool["api_key"]
    pool["api_keys"] = ["sk-one", "sk-two", "sk-three"]
    ups.force("pool", key_status={"sk-one": 429})
    running = await start_gateway(config)
    async with openai.AsyncOpenAI(base_url=running.url, api_key="x", max_retries=0) as client:
        for _ in range(6):
            answer = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content
    keys = ups.keys("pool")
    # sk-one answered 429 once, then rested (Retry-After: 7); the others took turns.
    assert keys == {"Bearer sk-one": 1, "Bearer sk-two": 3, "Bearer sk-three": 3}


async def test_a_key_pool_whose_every_key_is_limited_answers_429(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "pool")
    config = routing_config(ups, {"m": {"provider": "pool", "price": PRICE}})
    del config["providers"]["pool"]["api_key"]
    config["providers"]["pool"]["api_keys"] = ["sk-one", "sk-two"]
    ups.fail("pool", 429, retry_after=30)
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, headers, body = await ask(s, running)
    assert status == 429 and headers["Retry-After"] == "30"
    assert body["error"]["code"] == "upstream_rate_limited"
    assert ups.keys("pool") == {"Bearer sk-one": 1, "Bearer sk-two": 1}


@pytest.mark.parametrize("model, message", [
    ({"provider": "a", "deployments": [{"provider": "a"}], "price": PRICE},
     "models.m: give either provider (one upstream) or deployments (several), not both"),
    ({"price": PRICE}, "models.m.provider: required (or list the model's upstreams under deployments)"),
    ({"deployments": [{"provider": "ghost"}], "price": PRICE}, "models.m.deployments[0].provider: unknown provider"),
    ({"deployments": [{"provider": "a", "weight": -1}], "price": PRICE}, "models.m.deployments[0].weight: must be"),
    ({"deployments": [{"provider": "a", "rpm": 0}], "price": PRICE}, "models.m.deployments[0].rpm: must be from 1 to"),
    ({"deployments": [{"provider": "a", "tpm": 10**40}], "price": PRICE},
     "models.m.deployments[0].tpm: must be from 1 to 1000000000000 (leave it out for no limit), got 1000"),
    ({"deployments": [{"provider": "a"}], "strategy": "fastest", "price": PRICE},
     "models.m.strategy: expected one of 'weighted', 'least_busy', 'latency', 'cheapest'"),
])
async def test_deployment_mistakes_are_named(aiohttp_server, model, message):
    from proxy import ConfigError
    from proxy.gateway import build_gateway

    ups = await make_upstreams(aiohttp_server, "a")
    with pytest.raises(ConfigError) as exc:
        build_gateway(routing_config(ups, {"m": model}))
    assert str(exc.value).startswith(message)
