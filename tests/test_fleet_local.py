"""``storage.on_counters_down: local`` through two real ``tollway serve`` processes.

Redis (a redis-server of the test's own) stops: each instance goes on serving
the unmetered limited key at ``limit / instances`` (here rpm 10 over two
instances: 5 each), a metered key is refused (503 ``counters_unavailable``:
money is never spent blind), a key with neither is served. Redis comes back
(empty): the limits are shared again without a restart (10 in all, whichever
instance is asked). One log line when the outage starts, one when it ends.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from business import bearer, biz_config
from fleet import kill_all, private_redis, start_servers, until
from stores import fresh_database
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

LIMITED = "sk-local-limited-0001"  # unmetered, rpm 10
METERED = "sk-local-metered-0001"  # $1
FREE = "sk-local-free-000001"  # unmetered, no limits
HOLD_TTL = 3  # the instances beat every second


async def ask(s: aiohttp.ClientSession, server: Server, key: str) -> tuple[int, dict]:
    payload = {"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(key)) as r:
        return r.status, await r.json()


async def statuses(s: aiohttp.ClientSession, server: Server, key: str, n: int) -> list[int]:
    return sorted(a[0] for a in await asyncio.gather(*(ask(s, server, key) for _ in range(n))))


async def ready(s: aiohttp.ClientSession, server: Server) -> tuple[int, dict]:
    async with s.get(server.url + "/health/ready") as r:
        return r.status, await r.json()


async def test_local_mode_divides_unmetered_limits_refuses_money_and_shares_again_when_redis_is_back(tmp_path):
    async with fresh_database("postgres", tmp_path) as pg:
        with private_redis(tmp_path) as redis_server:
            port = redis_server.port
            prefix = "tlocal:"
            config = biz_config(keys=[{"name": "lim", "key": LIMITED, "credits": None, "limits": {"rpm": 10}},
                                      {"name": "paid", "key": METERED, "credits": 1.0},
                                      {"name": "free", "key": FREE, "credits": None}])
            config["server"].update(host="127.0.0.1", access_log="off")
            config["storage"] = {"url": pg, "on_counters_down": "local",
                                 "counters": f"redis://127.0.0.1:{port}/0?timeout=0.5&hold_ttl={HOLD_TTL}"
                                             f"&prefix={prefix}"}
            path = tmp_path / "tollway.yaml"
            path.write_text(yaml.safe_dump(config))
            servers: list[Server] = []
            try:
                servers = await start_servers(path, 2)
                a, b = servers
                client = aioredis.Redis(port=port)
                await until(lambda: client.zcard(prefix + "instances"), 10, "the instances' first beats")
                await until(lambda: _two(client, prefix), 10, "both instances to beat")
                await client.aclose()
                await asyncio.sleep(HOLD_TTL / 3 + 0.5)  # each has beaten since: each has seen 2
                async with aiohttp.ClientSession() as s:
                    assert (await ask(s, a, METERED))[0] == 200
                    redis_server.kill()
                    redis_server.wait()
                    # rpm 10 over 2 instances: 5 on each, not 10 on each.
                    assert await statuses(s, a, LIMITED, 8) == [200] * 5 + [429] * 3
                    assert await statuses(s, b, LIMITED, 8) == [200] * 5 + [429] * 3
                    for server in (a, b):
                        status, body = await ask(s, server, METERED)
                        assert status == 503 and body["error"]["code"] == "counters_unavailable", body
                        assert (await ask(s, server, FREE))[0] == 200
                        status, body = await ready(s, server)
                        assert status == 503 and body["counters"] == "down" and body["storage"] == "ok", body
            except BaseException:  # (else they go on across Redis's restart, and are stopped below)
                kill_all(servers)
                raise
        # Redis back, empty, on the same port: shared limits again, no restart.
        with private_redis(tmp_path, port=port):
            try:
                async with aiohttp.ClientSession() as s:
                    for server in servers:
                        await until(lambda server=server: _ready(s, server), 10, "the instances to use Redis again")
                    assert (await ask(s, a, METERED))[0] == 200
                    # One window of 10 for the whole fleet: 1 through B (its scripts loaded again
                    # first), then 9 left for A, then none for B.
                    assert (await ask(s, b, LIMITED))[0] == 200
                    assert await statuses(s, a, LIMITED, 12) == [200] * 9 + [429] * 3
                    assert await statuses(s, b, LIMITED, 3) == [429] * 3
            finally:
                errs = []
                for server in servers:
                    code, _, err = await asyncio.to_thread(server.stop)
                    errs.append(err)
                    assert code == 0, err
    for err in errs:
        assert err.count("Redis cannot be reached") == 1, err
        assert err.count("enforced by each instance at limit / 2 (2 instance(s) seen)") == 1, err
        assert err.count("Redis answers again; limits are shared again") == 1, err


async def _two(client: aioredis.Redis, prefix: str) -> bool:
    return await client.zcard(prefix + "instances") == 2


async def _ready(s: aiohttp.ClientSession, server: Server) -> bool:
    return (await ready(s, server))[0] == 200
