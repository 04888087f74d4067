"""Top-ups and grants with shared counters (Redis), many at once through the admin API.

Each top-up is stored, then queued for Redis and sent by whoever pushes the queue:
the request that made it, another top-up's request, or the ledger writer's pass.
Pushers ran side by side on one queue: two sent the same head, both removed one
entry, so one removed an entry nobody had sent (money stored but never spendable)
or found the queue empty (IndexError: a 500 to an operator whose top-up was made).
"""

from __future__ import annotations

import asyncio

import aiohttp
from business import DEMO, admin, biz_config, credits
from fleet import redis_url

from plugins.accounts import ACCOUNTS


async def test_concurrent_top_ups_all_answer_and_all_reach_the_fleet_balance(start_gateway, mock_upstream, tmp_path):
    config = biz_config(mock_upstream.url)
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db", "counters": redis_url()}
    running = await start_gateway(config)
    book = running.gw.services[ACCOUNTS]
    async with aiohttp.ClientSession() as s:
        start = (await credits(s, running, DEMO))["balance_micro_usd"]  # the account is in Redis now
        (aid,) = {k.account_id for k in book.by_id.values()}
        for _ in range(3):
            answers = await asyncio.gather(
                *(admin(s, running, "POST", f"/admin/accounts/{aid}/credits", {"amount": 0.01}) for _ in range(12)),
                book.writer.flush_shared())  # the writer's pass pushes the same queue
            statuses = [status for status, _ in answers[:-1]]
            assert statuses == [200] * 12, answers
        assert not book.pending_topups
        view = await credits(s, running, DEMO)
    assert view["balance_micro_usd"] == start + 36 * 10_000  # Redis's balance: every top-up, once
    stored = await running.gw.store.fetchone("select balance_micro_usd from tollway_accounts where id = ?", (aid,))
    assert stored[0] == start + 36 * 10_000
