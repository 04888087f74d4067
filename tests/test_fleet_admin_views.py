"""What the admin API and the dashboard show of a balance, in a fleet: two real ``tollway
serve`` processes on one Redis and one PostgreSQL. Requests spend through A; B's admin API
(keys, accounts, the list of each, a top-up's answer) and its dashboard API show the balance
and the budgets' spend the fleet has, the one ``/v1/credits`` shows, not B's own copy: before, B showed an account
that had spent most of its money as untouched (and A a figure of its own), so an operator read
three different balances for one account."""

from __future__ import annotations

import aiohttp
import pytest
from business import ADMIN_HEADERS, bearer, biz_config
from fleet import fleet_of, until
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
