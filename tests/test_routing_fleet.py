"""Breakers shared by a fleet: two real ``tollway serve`` processes on one Redis (a key
prefix of their own) and one PostgreSQL schema. A breaker that opens on one is open on the
other within a second, which then sends that deployment nothing; a probe that closes it on
one closes it on the other; a pool key answered 429 on one rests on the other."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import yaml
from business import ADMIN, ADMIN_HEADERS
from fleet import REDIS, kill_all, redis_url, start_servers, until
from routing_helpers import MESSAGES, deployments, make_upstreams, routing_config
from stores import fresh_database
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

PRICE = {"input": 1.0, "output": 2.0}
COOLDOWN = 3
HEALTH = {"window": 30, "min_requests": 3, "error_rate": 0.5, "cooldown": COOLDOWN, "half_open_probes": 1,
          "max_cooldown": 300}


async def chat(s: aiohttp.ClientSession, server: Server, model: str = "m") -> tuple[int, str | None]:
    """(status, the provider that answered)."""
    async with s.post(server.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES}) as r:
        await r.read()
        return r.status, r.headers.get("x-tollway-provider")


async def breaker(s: aiohttp.ClientSession, server: Server, name: str = "a/a-model") -> dict:
    async with s.get(server.url + "/admin/upstreams", headers=ADMIN_HEADERS) as r:
        assert r.status == 200, await r.text()
        return next(d for d in (await r.json())["data"] if d["deployment"] == name)


async def test_a_breaker_opened_on_one_instance_is_open_on_the_other_within_a_second(tmp_path, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b", "c")
    config = routing_config(ups, {"m": {"deployments": deployments(("a", 1000), ("b", 0.001)), "price": PRICE},
                                  "pooled": {"provider": "c", "model": "c-model", "price": PRICE}},
                            {"retries": 0, "health": HEALTH})
    pool = config["providers"]["c"]
    pool["api_keys"] = ["sk-one", "sk-two"]
    del pool["api_key"]
    config["server"].update(host="127.0.0.1", access_log="off", admin_key=ADMIN)
    async with fresh_database("postgres", tmp_path) as pg:
        config["storage"] = {"url": pg, "counters": redis_url()}
        path = tmp_path / "tollway.yaml"
        path.write_text(yaml.safe_dump(config))
        servers = await start_servers(path, 2)
        first, second = servers
        try:
            ups.fail("a", 503)
            async with aiohttp.ClientSession() as s:
                for _ in range(3):
                    assert await chat(s, first) == (503, "a")
                assert (await breaker(s, first))["state"] == "open"
                opened = time.monotonic()
                await until(lambda: _state(s, second, "open"), timeout=1.0, what="the second instance to see it open")
                assert time.monotonic() - opened < 1.0
                assert 0 < (await breaker(s, second))["retry_in"] <= COOLDOWN
                hits = ups.hits("a")
                for _ in range(20):  # the second instance sends the open deployment nothing
                    assert await chat(s, second) == (200, "b")
                assert ups.hits("a") == hits
                # After the cooldown the first instance's probe succeeds: closed there, then here.
                ups.recover("a")
                await asyncio.sleep(COOLDOWN + 0.2)
                assert await chat(s, first) == (200, "a")
                assert (await breaker(s, first))["state"] == "closed"
                closed = time.monotonic()
                await until(lambda: _state(s, second, "closed"), timeout=1.0,
                            what="the second instance to see it closed")
                assert time.monotonic() - closed < 1.0
                # A pool key answered 429 on the first instance rests on the second too.
                ups.force("c", key_status={"sk-one": 429}, retry_after=30)
                assert await chat(s, first, "pooled") == (200, "c")  # sk-one 429, then sk-two
                rested = time.monotonic()
                await until(lambda: _resting(s, second), timeout=1.0, what="the second instance to rest sk-one")
                assert time.monotonic() - rested < 1.0
                for _ in range(4):
                    assert await chat(s, second, "pooled") == (200, "c")
                assert ups.keys("c") == {"Bearer sk-one": 1, "Bearer sk-two": 5}
        finally:  # killed, not stopped: nothing to flush, and the schema is dropped only when they are gone
            kill_all(servers)


async def _state(s: aiohttp.ClientSession, server: Server, state: str) -> bool:
    return (await breaker(s, server))["state"] == state


async def _resting(s: aiohttp.ClientSession, server: Server) -> bool:
    async with s.get(server.url + "/admin/upstreams", headers=ADMIN_HEADERS) as r:
        first_key = (await r.json())["key_pools"]["c"][0]
    return first_key["resting_for"] > 20


PROBE_HEALTH = {**HEALTH, "cooldown": 1.5, "max_cooldown": 30}


async def test_the_fleet_sends_at_most_half_open_probes_to_a_deployment_after_its_cooldown(tmp_path, aiohttp_server):
    """Two instances, ``half_open_probes: 1``: while one instance's probe hangs, the other sends
    the deployment nothing (before, each instance sent its own probe); a probe that fails keeps
    the fleet's slot for the new cooldown; then one probe for the fleet closes it everywhere."""
    import redis.asyncio as aioredis

    ups = await make_upstreams(aiohttp_server, "a", "b")
    config = routing_config(ups, {"m": {"deployments": deployments(("a", 1000), ("b", 0.001)), "price": PRICE}},
                            {"retries": 0, "health": PROBE_HEALTH})
    config["providers"]["a"]["timeouts"]["first_byte"] = 4  # the hanging probe's end
    config["server"].update(host="127.0.0.1", access_log="off", admin_key=ADMIN)
    counters = redis_url()
    slot_key = counters.split("prefix=")[1] + "cc:routing.probe\x1fa/a-model"  # the fleet's probe slots of a
    db = aioredis.from_url(REDIS)
    async with fresh_database("postgres", tmp_path) as pg:
        config["storage"] = {"url": pg, "counters": counters}
        path = tmp_path / "tollway.yaml"
        path.write_text(yaml.safe_dump(config))
        servers = await start_servers(path, 2)
        first, second = servers
        try:
            ups.fail("a", 503)
            async with aiohttp.ClientSession() as s:
                for _ in range(3):
                    assert await chat(s, first) == (503, "a")
                await until(lambda: _state(s, second, "open"), timeout=1.0, what="the second instance to see it open")
                ups.recover("a")
                ups.force("a", hang=True)
                await until(lambda: _cooled(s, servers), timeout=10, what="both cooldowns to end")
                hits = ups.hits("a")
                probe = asyncio.create_task(chat(s, first))
                await until(lambda: ups.hits("a") == hits + 1, what="the first instance's probe")
                for _ in range(10):  # the fleet's one probe slot is taken: the second probes nothing
                    assert await chat(s, second) == (200, "b")
                assert not probe.done(), "the probe ended before the second instance was asked"
                assert ups.hits("a") == hits + 1
                assert (await breaker(s, second))["state"] == "half_open"
                status, provider = await probe  # the first byte never came: a failed probe
                assert status == 504 and provider == "a"
                assert (await breaker(s, first))["state"] == "open"
                await until(lambda: _state(s, second, "open"), timeout=1.0, what="the second instance to see it open")
                assert await db.zcard(slot_key) == 1  # kept by the failed probe for the new cooldown
                ups.recover("a")
                ups.force("a", delay=1.0)
                await until(lambda: _cooled(s, servers), timeout=10, what="both new cooldowns to end")
                await until(lambda: _zero(db, slot_key), timeout=2, what="the failed probe's slot to come back")
                hits = ups.hits("a")
                answers = await asyncio.gather(chat(s, first), chat(s, second))
                assert sorted(answers) == [(200, "a"), (200, "b")]  # one probe for the fleet, which closed it
                assert ups.hits("a") == hits + 1
                for server in servers:
                    await until(lambda server=server: _state(s, server, "closed"), timeout=1.0,
                                what="the breaker closed on both")
        finally:
            await db.aclose()
            kill_all(servers)


async def _cooled(s: aiohttp.ClientSession, servers: list[Server]) -> bool:
    return all([(await breaker(s, server))["retry_in"] == 0 for server in servers])


async def _zero(db, key: str) -> bool:
    return await db.zcard(key) == 0
