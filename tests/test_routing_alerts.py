"""A breaker that opens or closes reaches the operator's webhook (the alerts plugin's
deployment_opened / deployment_closed), signed, as any alert."""

from __future__ import annotations

import aiohttp
from routing_helpers import ask, deployments, make_upstreams, routing_config, use_clock
from test_alerts import SECRET, receiver, verified  # noqa: F401  (receiver: the fixture)

PRICE = {"input": 1.0, "output": 2.0}
HEALTH = {"window": 30, "min_requests": 2, "error_rate": 0.5, "cooldown": 10, "half_open_probes": 1,
          "max_cooldown": 300}


async def test_a_deployment_taken_out_and_put_back_is_announced_to_the_webhook(start_gateway, aiohttp_server,
                                                                              receiver):  # noqa: F811
    rec, url = await receiver()
    ups = await make_upstreams(aiohttp_server, "a", "b")
    config = routing_config(ups, {"m": {"deployments": deployments(("a", 1000), ("b", 0.001)), "price": PRICE}},
                            {"retries": 0, "health": HEALTH})
    config["alerts"] = {"webhooks": [{"url": url, "secret": SECRET, "events": ["deployment"]}],
                        "poll_seconds": 0.05, "retry": {"first_delay": 0.05, "max_delay": 0.2}}
    running = await start_gateway(config)
    clock = use_clock(running)
    ups.fail("a", 503)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            assert (await ask(s, running))[0] == 503
        await rec.until(1)
        opened = verified(*rec.got[0])
        assert opened["type"] == "deployment_opened" and rec.got[0][0]["X-Tollway-Event"] == "deployment_opened"
        assert opened["data"] == {"deployment": "a/a-model", "reason": "2 of the last 2 answers failed "
                                  "(upstream_overloaded)", "retry_in": 10.0}
        ups.recover("a")
        clock.advance(10)
        status, headers, _ = await ask(s, running)  # the half-open probe goes to a and succeeds
        assert status == 200 and headers["x-tollway-provider"] == "a"
        await rec.until(2)
    closed = verified(*rec.got[1])
    assert closed["type"] == "deployment_closed"
    assert closed["data"] == {"deployment": "a/a-model", "reason": "probe succeeded"}
    assert opened["id"] != closed["id"]
