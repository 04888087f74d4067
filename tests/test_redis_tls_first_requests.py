"""A burst of first requests of an account over ``rediss://``: no TLS handshake per request.

Every seed of an account Redis does not have yet (a new account's first requests, or every
account after Redis lost its data) first reads Redis's life token (``redis_restore.py``).
That read went through redis-py's pool: a burst of first requests took a connection each, over
TLS a handshake each, and on a loaded machine the handshakes outlasted the counters' timeout:
503 ``counters_unavailable`` for the burst. The read goes on the scripts' one pipelined
connection now: the burst opens no connection. Checked with a Redis of the test's own that
speaks only TLS, counting its clients around the burst.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio
from business import biz_config, chat
from fleet import private_redis

pytestmark = pytest.mark.fleet

BURST = 16


async def test_a_burst_of_first_requests_opens_no_redis_connection(tmp_path, start_gateway):
    keys = [{"name": "warm", "key": "sk-tls-warm-00000001", "credits": 5.0}]
    keys += [{"name": f"new{i}", "key": f"sk-tls-new-{i:09d}", "credits": 5.0}
             for i in range(BURST)]
    with private_redis(tmp_path, tls=True) as server:
        config = biz_config(keys=keys)
        config["storage"] = {"url": f"sqlite:///{tmp_path}/store.db", "counters": server.url}
        running = await start_gateway(config)
        check = redis.asyncio.from_url(server.url)
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(3):  # the pool's connections of a running gateway (its writer's...)
                    assert (await chat(s, running, "sk-tls-warm-00000001", max_tokens=5))[0] == 200
                clients = (await check.info("clients"))["connected_clients"]
                answers = await asyncio.gather(*(chat(s, running, f"sk-tls-new-{i:09d}", max_tokens=5)
                                                 for i in range(BURST)))
                after = (await check.info("clients"))["connected_clients"]
            await running.close()  # while its Redis runs (the test's end stops it)
        finally:
            await check.aclose()
    assert [a[0] for a in answers] == [200] * BURST, [a[2] for a in answers if a[0] != 200]
    assert after - clients <= 1, f"{after - clients} Redis connections opened by {BURST} first requests"
