"""Shared breakers (Redis): a read of the fleet's breakers that was on its way while this
instance's own breaker opened does not close it again.

``SharedHealth.load`` reads every deployment's entry from Redis; this instance's breaker
opening meanwhile sends its entry behind. The read, older than that, still had what another
instance wrote before (closed), unlike what this instance had just written, so it was taken:
the breaker opened here was closed at once, and this instance went on sending requests to
the failing deployment (its own notice never comes back to it to correct that).
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from fleet import redis_url
from routing_helpers import deployments, make_upstreams, routing_config

from plugins.routing.health import CLOSED, OPEN
from plugins.routing.router import ROUTER

pytestmark = pytest.mark.fleet

HEALTH = {"window": 30, "min_requests": 3, "error_rate": 0.5, "cooldown": 30, "half_open_probes": 1,
          "max_cooldown": 300}


async def test_a_breaker_that_opens_while_the_fleets_are_read_stays_open(start_gateway, aiohttp_server, tmp_path):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    config = routing_config(ups, {"m": {"deployments": deployments(("a", 1000), ("b", 0.001)),
                                        "price": {"input": 1.0, "output": 2.0}}},
                            {"retries": 0, "health": HEALTH})
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db", "counters": redis_url()}
    running = await start_gateway(config)
    router = running.gw.services[ROUTER]
    shared, board = router.shared, router.health
    link = shared.counters.link
    name = "a/a-model"
    # Another instance closed this deployment's breaker a while ago (a probe succeeded there).
    closed = orjson.dumps({"state": CLOSED, "until": time.time(), "reason": "probe succeeded"})
    await link.call(lambda: link.redis.hset(shared.key, name, closed))

    async def fail_here() -> None:  # while the read is on its way: enough failures to open it
        for _ in range(HEALTH["min_requests"]):
            board.record(name, router.clock(), True, False, "503")

    await asyncio.gather(shared.load(), fail_here())
    assert board.breakers[name].state == OPEN
    await shared.counters.settled()  # (its entry, sent behind)
    written = orjson.loads(await link.call(lambda: link.redis.hget(shared.key, name)))
    assert written["state"] == OPEN
