"""A Responses API answer continued at once on another instance (``previous_response_id``):
two real ``tollway serve`` processes on one PostgreSQL and one Redis. The second has never
seen the response and reads only the store, so the owner's row must be there by the time
the first instance's answer (or its stream) has ended. The first instance reaches
PostgreSQL through a proxy that delays what it sends (a busy store): when the row was
written behind the answer, the continuation came first and was told the id is unknown."""

from __future__ import annotations

import secrets

import aiohttp
import orjson
import pytest
import yaml
from business import DEMO, bearer, biz_config
from fleet import TcpProxy, kill_all, redis_url, start_servers
from stores import PG, run_pg
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

SLOW_STORE_S = 0.2  # each write of the first instance's store takes this long


async def respond(s: aiohttp.ClientSession, url: str, stream: bool, previous: str | None = None) -> tuple[int, dict]:
    """(status, the response object or the error body), once the whole answer has arrived
    (the mock's response id is a hash of the input: each call its own)."""
    body = {"model": "up", "input": f"hello there {secrets.token_hex(4)}", "stream": stream,
            **({"previous_response_id": previous} if previous else {})}
    async with s.post(url + "/v1/responses", json=body, headers=bearer(DEMO)) as r:
        if not stream or r.status != 200:
            return r.status, await r.json(content_type=None)
        made: dict = {}
        async for line in r.content:  # to the stream's end
            if line.startswith(b"data: {"):
                made = orjson.loads(line[6:]).get("response") or made
        return r.status, made


async def test_a_response_continues_at_once_on_another_instance(tmp_path, mock_upstream):
    schema = f"tollway_resp_{secrets.token_hex(4)}"
    await run_pg(f"create schema {schema}")
    proxy = TcpProxy(5432)
    await proxy.start()
    config = biz_config(mock_upstream.url)
    config["server"].update(host="127.0.0.1", access_log="off", shutdown_timeout=5)
    config["storage"] = {"url": f"{PG}?search_path={schema}", "counters": redis_url()}
    direct = tmp_path / "direct.yaml"
    direct.write_text(yaml.safe_dump(config))
    config["storage"]["url"] = f"{PG.replace(':5432', f':{proxy.port}')}?search_path={schema}"
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump(config))
    servers = await start_servers(direct, 1)
    try:
        servers.append(Server(slow))
        await servers[1].wait_ready()
        first, second = servers[1], servers[0]
        proxy.delay = SLOW_STORE_S
        async with aiohttp.ClientSession() as s:
            made_ids = set()
            for stream in (True, False):
                status, made = await respond(s, first.url, stream)
                assert status == 200 and made["id"].startswith("resp_") and made["id"] not in made_ids, made
                made_ids.add(made["id"])
                status, again = await respond(s, second.url, False, previous=made["id"])
                assert status == 200, (stream, again)
    finally:
        proxy.delay = 0.0
        kill_all(servers)
        await proxy.close()
        await run_pg(f"drop schema if exists {schema} cascade")
