"""An account's policy (suspension, budgets, limits) changed through one instance applies on
every instance within a second: two real ``tollway serve`` processes on one Redis and one
PostgreSQL, polling the store only once a minute (``plugins.auth.poll_ms``), so the change
notice on Redis is what must carry it (as it carries key changes)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import aiohttp
import orjson
import pytest
from business import ADMIN_HEADERS, bearer, biz_config
from fleet import fleet_of
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

WITHIN_S = 1.0  # the promise for a change made through any instance


async def ask(s: aiohttp.ClientSession, server: Server, key: str) -> tuple[int, str | None]:
    """(status, error code)."""
    payload = {"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "w w w"}]}
    async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(key)) as r:
        body = await r.read()
        return r.status, None if r.status == 200 else orjson.loads(body)["error"]["code"]


async def answers_within(s: aiohttp.ClientSession, server: Server, key: str, want: tuple[int, str | None],
                         since: float, what: str) -> None:
    while (got := await ask(s, server, key)) != want:
        assert time.monotonic() - since < WITHIN_S, f"{what}: still {got} after {WITHIN_S} s"
        await asyncio.sleep(0.05)


async def test_a_policy_changed_on_one_instance_applies_on_the_other_within_a_second(tmp_path):
    config = biz_config(keys=[])
    config["server"].update(host="127.0.0.1", access_log="off", shutdown_timeout=5)
    config["plugins"]["auth"] = {"poll_ms": 60_000}  # only the notice can bring a change within the second
    async with fleet_of(tmp_path, config, 2) as fleet, aiohttp.ClientSession() as s:
        a, b = fleet.servers

        async def admin(method: str, route: str, body: dict) -> dict:
            async with s.request(method, a.url + route, json=body, headers=ADMIN_HEADERS) as r:
                assert r.status in (200, 201), await r.text()
                return await r.json()

        await admin("POST", "/admin/accounts", {"id": "acme", "credits": 1.0})
        key = (await admin("POST", "/admin/keys", {"name": "k", "credits": 0, "account": "acme"}))["key"]
        await answers_within(s, b, key, (200, None), time.monotonic(), "a key made on A, used on B")

        await admin("PATCH", "/admin/accounts/acme", {"suspended": True})
        await answers_within(s, b, key, (402, "account_suspended"), time.monotonic(), "suspended on A, on B")

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "accounts", "resume", "--config", str(fleet.path), "acme",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err
        await answers_within(s, b, key, (200, None), time.monotonic(), "resumed by the CLI, on B")

        # A daily budget smaller than one request's worst case: B refuses it as too small.
        await admin("PATCH", "/admin/accounts/acme", {"budgets": {"daily": 0.000001}})
        await answers_within(s, b, key, (400, "budget_too_small"), time.monotonic(), "a budget set on A, on B")
        await admin("PATCH", "/admin/accounts/acme", {"budgets": {}, "limits": {"rpm": 1}})
        changed = time.monotonic()
        while (await ask(s, b, key))[0] != 429:  # rpm 1: the second request within the minute
            assert time.monotonic() - changed < WITHIN_S, "a limit set on A was not enforced on B"
            await asyncio.sleep(0.05)
        for server in fleet.servers:
            server.proc.send_signal(signal.SIGTERM)
        for code, _, err in await asyncio.gather(*(asyncio.to_thread(server.stop) for server in fleet.servers)):
            assert code == 0, err
