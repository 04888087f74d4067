"""Refills with shared counters (Redis): the grant is computed from the balance the
fleet sees (Redis's, not this process's memory, which does not see spending settled
in Redis) and the money granted reaches Redis, where the keys spend it. Without
rollover the balance is brought up to the grant exactly; with rollover the grant is
added. Money checked: what /v1/credits says, what is stored, and the ledger."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from business import chat, credits, ledger_rows
from fleet import redis_url
from test_budgets import KEY_A, PRICE, Clock, next_year
from test_refills import clock_year, refilled, set_clock, spend

from plugins.accounts import ACCOUNTS


@pytest.mark.parametrize("rollover", [False, True])
async def test_a_refill_with_shared_counters_grants_what_the_fleet_sees(start_gateway, mock_upstream, tmp_path,
                                                                        rollover):
    config = refilled(mock_upstream.url, {"every": "month", "amount": 5 * PRICE / 1e6, "rollover": rollover})
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db", "counters": redis_url()}
    running = await start_gateway(config)
    book = running.gw.services[ACCOUNTS]
    clock = Clock(next_year(2, 27, 12, 0))
    set_clock(running, clock)
    await book.refills.apply_due()
    async with aiohttp.ClientSession() as s:
        before = (await credits(s, running, KEY_A))["balance_micro_usd"]
        assert before == (10 if rollover else 5) * PRICE  # this month's grant and February's
        await spend(s, running, 2)  # settled in Redis
        assert (await credits(s, running, KEY_A))["balance_micro_usd"] == before - 2 * PRICE
        after_grant = before + 3 * PRICE if rollover else 5 * PRICE
        clock.now = datetime(clock_year(clock), 3, 1, 0, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
        assert await book.refills.apply_due() == 1  # a new month: its grant
        assert (await credits(s, running, KEY_A))["balance_micro_usd"] == after_grant
        # Every micro-unit granted can be spent, and no more.
        await spend(s, running, after_grant // PRICE)
        status, _, body = await chat(s, running, KEY_A, model="up", max_tokens=8)
        assert status == 402, body
        view = await credits(s, running, KEY_A)
    assert view["balance_micro_usd"] == 0 and view["reserved_micro_usd"] == 0
    await book.writer.drain_shared()  # the ledger stream's rows, into the store
    rows = await ledger_rows(running, "cost", "status")
    granted = sum(amount for (amount,) in await running.gw.store.fetchall(
        "select amount_micro_usd from tollway_grants where account_id = 'sub'"))
    assert sum(r["cost"] for r in rows if r["status"] == 200) == granted == view["spent_micro_usd"]
