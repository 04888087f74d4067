"""What the admin API and the dashboard show of a balance, in a fleet: two real ``tollway
serve`` processes on one Redis and one PostgreSQL. Requests spend through A; B's admin API
(keys, accounts, the list of each, a top-up's answer) and its dashboard API show the balance
and the budgets' spend the fleet has, the one ``/v1/credits`` shows, not B's own copy: before, B showed an account
that had spent most of its money as untouched (and A a figure of its own), so an operator read
three different balances for one account."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest
from business import ADMIN_HEADERS, bearer, biz_config
from fleet import TcpProxy, fleet_of, redis_url, until
from stores import PG
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

KEY = "sk-test-fleet-views-0001"
OPENING = 1_000_000  # $1.00


async def test_admin_views_on_another_instance_show_the_fleet_balance(tmp_path):
    config = biz_config(keys=[{"name": "k", "key": KEY, "account": "acme", "budgets": {"daily": 0.5}}])
    config["accounts"] = {"acme": {"credits": OPENING / 1e6, "budgets": {"daily": 0.6}}}
    config["server"].update(host="127.0.0.1", access_log="off", shutdown_timeout=5)
    config["plugins"]["ledger"] = {"flush_ms": 60_000}  # the store lags: only Redis has the charges
    async with fleet_of(tmp_path, config, 2) as fleet, aiohttp.ClientSession() as s:
        a, b = fleet.servers

        async def get(server: Server, route: str, headers: dict = ADMIN_HEADERS) -> dict:
            async with s.get(server.url + route, headers=headers) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        await get(b, "/admin/keys/cfg_k")  # B has the account in memory before A spends
        told = 0
        payload = {"model": "echo", "max_tokens": 20, "messages": [{"role": "user", "content": "hello " * 30}]}
        for _ in range(5):
            async with s.post(a.url + "/v1/chat/completions", json=payload, headers=bearer(KEY)) as r:
                assert r.status == 200, await r.text()
                told += round(float(r.headers["x-tollway-cost"]) * 1e6)
        assert told > 0
        left = OPENING - told

        credits = await get(b, "/v1/credits", bearer(KEY))
        assert (credits["balance_micro_usd"], credits["spent_micro_usd"]) == (left, told)  # charged before the end

        async def budgets_spent() -> bool:  # (a budget's total is settled behind the answer: within ms)
            credits = await get(b, "/v1/credits", bearer(KEY))
            return [x["spent_micro_usd"] for x in credits["budgets"]] == [told, told]  # the key's, the account's

        await until(budgets_spent, 5.0, "B's /v1/credits shows the budgets' spend")
        for server in (a, b):
            key = await get(server, "/admin/keys/cfg_k")
            assert (key["account"]["balance_micro_usd"], key["account"]["spent_micro_usd"]) == (left, told)
            assert [x["spent_micro_usd"] for x in key["budget_status"]] == [told, told]
            [listed] = [k for k in (await get(server, "/admin/keys"))["data"] if k["id"] == "cfg_k"]
            assert listed["account"]["balance_micro_usd"] == left
            account = await get(server, "/admin/accounts/acme")
            assert (account["balance_micro_usd"], account["spent_micro_usd"]) == (left, told)
            assert [x["spent_micro_usd"] for x in account["budget_status"]] == [told]
            [listed] = [x for x in (await get(server, "/admin/accounts"))["data"] if x["id"] == "acme"]
            assert listed["balance_micro_usd"] == left and listed["budget_status"][0]["spent_micro_usd"] == told

        async with s.post(b.url + "/admin/keys/cfg_k/credits", json={"amount": 0.5},
                          headers=ADMIN_HEADERS) as r:
            assert r.status == 200, await r.text()
            topped = await r.json()
        assert topped["account"]["balance_micro_usd"] == left + 500_000


async def test_admin_views_answer_from_this_process_while_redis_is_cut(tmp_path):
    """Redis unreachable: the admin API and the dashboard's API still answer (this process's copy
    of the balance and budgets, which an operator needs most then), each within the counters'
    timeout, and an admin top-up made meanwhile is stored and reaches Redis once it is back."""
    proxy = TcpProxy(6379)
    await proxy.start()
    config = biz_config(keys=[{"name": "k", "key": KEY, "account": "acme", "budgets": {"daily": 0.5}}])
    config["accounts"] = {"acme": {"credits": OPENING / 1e6}}
    config["server"].update(host="127.0.0.1", access_log="off", shutdown_timeout=5)
    config["storage"] = {"counters": redis_url(f"redis://127.0.0.1:{proxy.port}/0")}
    timeout = aiohttp.ClientTimeout(total=20)  # a hang fails the test instead of holding it
    try:
        async with fleet_of(tmp_path, config, 1) as fleet, aiohttp.ClientSession(timeout=timeout) as s:
            [server] = fleet.servers
            payload = {"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}
            async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(KEY)) as r:
                assert r.status == 200, await r.text()
                told = round(float(r.headers["x-tollway-cost"]) * 1e6)

            async def stored() -> bool:  # the writer moved the charge from Redis's stream to the store
                conn = await asyncpg.connect(PG)
                try:
                    return await conn.fetchval(f"select balance_micro_usd from {fleet.schema}.tollway_accounts "
                                               "where id = 'acme'") == OPENING - told
                finally:
                    await conn.close()

            await until(stored, 10.0, "the charge stored")
            await asyncio.sleep(0.5)  # (auth.poll_ms: the process reads the store's change)
            await proxy.cut()
            async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(KEY)) as r:
                assert (r.status, (await r.json())["error"]["code"]) == (503, "counters_unavailable")

            for route in ("/admin/keys/cfg_k", "/admin/keys", "/admin/accounts/acme", "/admin/accounts"):
                async with s.get(server.url + route, headers=ADMIN_HEADERS) as r:
                    assert r.status == 200, (route, await r.text())
                    body = await r.json()
                if route == "/admin/keys/cfg_k":
                    assert body["account"]["balance_micro_usd"] == OPENING - told
                    assert [x["spent_micro_usd"] for x in body["budget_status"]] == [told]
                if route == "/admin/accounts/acme":
                    assert (body["balance_micro_usd"], body["spent_micro_usd"]) == (OPENING - told, told)
            async with s.post(server.url + "/admin/keys/cfg_k/credits", json={"amount": 0.25},
                              headers=ADMIN_HEADERS) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["account"]["balance_micro_usd"] == OPENING - told + 250_000

            await proxy.start()  # Redis is back: the top-up reaches it, and the next request sees it

            async def credits_back() -> bool:
                async with s.get(server.url + "/v1/credits", headers=bearer(KEY)) as r:
                    return r.status == 200 and (await r.json())["balance_micro_usd"] == OPENING - told + 250_000

            await until(credits_back, 10.0, "/v1/credits with the top-up once Redis is back")
    finally:
        await proxy.close()
