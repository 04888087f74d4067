"""Budgets on the dashboard: the customer's page shows its budgets and their reset
times; the console's accounts page shows each account's budgets, limits and refill."""

from __future__ import annotations

from business import ADMIN, DEMO
from test_dashboard import client, dash_config, sign_in

from plugins.accounts import ACCOUNTS


async def test_budgets_on_the_customer_page_and_accounts_in_the_console(start_gateway):
    config = dash_config()
    config["keys"] = [{"name": "demo", "key": DEMO, "account": "acme", "budgets": {"daily": 0.5}}]
    config["accounts"] = {"acme": {"credits": 5, "budgets": {"monthly": 2}, "limits": {"rpm": 600},
                                   "refill": {"every": "month", "amount": 5, "rollover": True}}}
    config["billing"] = {"timezone": "Asia/Kolkata"}
    running = await start_gateway(config)
    book = running.gw.services[ACCOUNTS]
    [daily, monthly] = await book.budget_status(book.by_id["cfg_demo"])
    async with client() as s:
        await sign_in(s, running, DEMO)
        async with s.get(running.root + "/dashboard/usage") as r:
            page = await r.text()
        assert "daily budget of the key" in page and "monthly budget of the account" in page
        for b in (daily, monthly):
            stamp = book.budgets.calendar.local_iso(b["resets_at"])
            assert b["resets_at_local"] == stamp
    async with client() as s:
        await sign_in(s, running, ADMIN)
        async with s.get(running.root + "/dashboard/accounts") as r:
            assert r.status == 200
            page = await r.text()
    assert "monthly $2.00: $2.00 left" in page  # resets at midnight on the 1st in Kolkata (18:30 UTC)
    assert 'T18:30:00Z">' in page
    assert "rpm 600 shared" in page and "5.0 every month (rollover)" in page
