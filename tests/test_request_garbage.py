"""A request through the whole business stack leaves no reference cycle behind.

A call kept alive by a cycle (e.g. an admission's continuation that holds the admission
that holds it) is freed only by Python's cyclic garbage collector: with it, the call's
request, response and everything they hold, about 50 objects a request, and collections
that cost several percent of the gateway's CPU at full speed (issue 10 item 12).
"""

from __future__ import annotations

import asyncio
import gc
import time

import aiohttp
from business import biz_config, chat

from proxy.call import Call

KEY = "sk-limited-garbage-01"


async def settled(running) -> None:
    """Every call has ended (its settle and finish hooks ran), within a generous deadline."""
    deadline = time.monotonic() + 30
    while running.gw.inflight.calls:
        assert time.monotonic() < deadline, "calls still in flight after 30 s"
        await asyncio.sleep(0.01)


async def test_calls_are_freed_without_the_cycle_collector(start_gateway):
    limits = {"rpm": 100000, "tpm": 100000000, "concurrency": 50}
    config = biz_config(keys=[{"name": "lim", "key": KEY, "credits": 10, "limits": limits}])
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, _, _ = await chat(s, running, KEY)  # warm: first-use caches are not per request
        assert status == 200
        await settled(running)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage, to be looked at
        try:
            for _ in range(5):
                status, headers, body = await chat(s, running, KEY)
                assert status == 200 and body["usage"]["cost"] > 0 and headers["x-ratelimit-limit-requests"]
                status, _, text = await chat(s, running, KEY, stream=True, stream_options={"include_usage": True})
                assert status == 200 and "[DONE]" in text
            await settled(running)
            gc.collect()
            cyclic = [o for o in gc.garbage if isinstance(o, Call)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert cyclic == [], f"{len(cyclic)} of 10 calls were freed only by the cyclic garbage collector"
