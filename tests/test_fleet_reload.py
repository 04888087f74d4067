"""A reload is per instance: two real ``tollway serve`` processes on one Redis and one PostgreSQL
read the same file; ``POST /admin/reload`` to one reloads that one (its prices, models...), not
the other, which serves the old file until it is reloaded itself (SIGHUP). What the reload
writes to the store (the YAML's keys) reaches the other at its next look at the store
(``plugins.auth.poll_ms``), as README's "Reloading the config" says."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
import yaml
from business import ADMIN_HEADERS, DEMO, bearer, biz_config
from fleet import kill_all, redis_url, start_servers, until
from stores import fresh_database
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

ADDED = "sk-fleet-reload-added-01"


async def price(s: aiohttp.ClientSession, server: Server) -> float:
    async with s.get(server.url + "/v1/models/echo", headers=bearer(DEMO)) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["pricing"]["input"]


async def status_with(s: aiohttp.ClientSession, server: Server, key: str) -> int:
    payload = {"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(key)) as r:
        await r.read()
        return r.status


async def test_a_reload_reaches_the_instance_asked_and_its_yaml_keys_the_others_through_the_store(tmp_path):
    config = biz_config()
    config["server"].update(host="127.0.0.1", access_log="off", shutdown_timeout=5)
    servers: list[Server] = []
    async with fresh_database("postgres", tmp_path) as pg:
        config["storage"] = {"url": pg, "counters": redis_url()}
        path = tmp_path / "tollway.yaml"
        path.write_text(yaml.safe_dump(config))
        try:
            servers = await start_servers(path, 2)
            a, b = servers
            async with aiohttp.ClientSession() as s:
                assert [await price(s, a), await price(s, b)] == [1.0, 1.0]
                config["models"]["echo"]["price"]["input"] = 4.0
                config["keys"].append({"name": "added", "key": ADDED, "credits": 1.0})
                path.write_text(yaml.safe_dump(config))
                async with s.post(a.url + "/admin/reload", headers=ADMIN_HEADERS) as r:
                    body = await r.json()
                    assert r.status == 200 and body["status"] == "reloaded", body
                assert await price(s, a) == 4.0
                # The key the reload wrote to the store: on B at its next look (poll_ms, 1 s).
                await until(lambda: _is(status_with(s, b, ADDED), 200), 10, "the reloaded YAML key on B")
                assert await price(s, b) == 1.0  # B has not read the file again: its prices are the old ones
                b.proc.send_signal(signal.SIGHUP)
                await until(lambda: _is(price(s, b), 4.0), 30, "B's price after its own reload")
            for server in servers:
                server.proc.send_signal(signal.SIGTERM)
            for code, _, err in await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers)):
                assert code == 0, err[-3000:]
        finally:
            kill_all(servers)  # (before the schema is dropped)


async def _is(value, expected) -> bool:
    return await value == expected
