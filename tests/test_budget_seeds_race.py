"""A budget set on a key that has spent this period, while the key's requests go on
(counters in memory).

Setting the budget makes it apply at once; what the key spent before is read from the
store after (``BudgetKeeper.load_seeds``, a few awaits). A request that came in those
awaits made the budget's total with what the old reading said (nothing): the spend
before was never counted, and the key could spend its whole cap again on top of it.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from business import admin, biz_config, chat

PRICE = 8000  # 8 completion tokens (the mock upstream's answer) at $1000 per 1M; input free


async def paid(session, running, key: str):
    return (await chat(session, running, key, model="up", max_tokens=8))[0]


@pytest.mark.parametrize("flush_during", [False, True], ids=["request", "request-stored-by-a-flush"])
async def test_a_request_while_a_new_budget_reads_the_spend_before_is_counted_once(start_gateway, mock_upstream,
                                                                                   flush_during):
    """flush_during: the ledger's timer flush stores the request's row before the read (seen
    as a flake on a loaded machine, where the 200 ms flush came during the request: the read
    held the row, and so did the total the request made: spent 32,000 for 24,000)."""
    from plugins.accounts import ACCOUNTS

    config = biz_config(mock_upstream.url, keys=[])
    config["models"]["up"]["price"] = {"input": 0, "output": 1000}
    config["billing"] = {"timezone": "UTC"}
    running = await start_gateway(config)
    store = running.gw.store
    writer = running.gw.services[ACCOUNTS].writer
    async with aiohttp.ClientSession() as s:
        status, made = await admin(s, running, "POST", "/admin/keys", json={"name": "late", "credits": 1.0})
        assert status == 201
        assert [await paid(s, running, made["key"]) for _ in range(2)] == [200, 200]

        # The request comes while the budget reads what the key spent (the first read of the rollups).
        during: list[int] = []
        flushes: list[asyncio.Future] = []
        read = store.fetchall

        async def fetchall(sql, params=()):
            if not during and "sum(cost_micro_usd)" in sql:
                during.append(await paid(s, running, made["key"]))
                if flush_during:  # the writer's timer comes now: it stores the row unless the read holds it off
                    flushes.append(asyncio.ensure_future(writer.flush()))
                    await asyncio.wait(flushes, timeout=3)
            return await read(sql, params)

        store.fetchall = fetchall
        try:
            status, _ = await admin(s, running, "PATCH", f"/admin/keys/{made['id']}",
                                    json={"budgets": {"monthly": 3 * PRICE / 1e6}})
        finally:
            del store.fetchall
        assert status == 200
        assert during == [200]  # two spent before, this one: the cap of three is reached
        await asyncio.gather(*flushes)

        status, shown = await admin(s, running, "GET", f"/admin/keys/{made['id']}")
        [budget] = shown["budget_status"]
        assert (budget["spent_micro_usd"], budget["remaining_micro_usd"]) == (3 * PRICE, 0)
        assert await paid(s, running, made["key"]) == 429
