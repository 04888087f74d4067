"""A batch line's charge recovered at start-up counts in the key's budgets.

A line whose answer was stored and whose charge a crash lost is charged when an instance
starts running the batches (ledger ``error_code`` ``batch_recovered``). That charge went to
the balance and the ledger, not to the budgets: the key's daily total (made from the store's
reading before the recovered row was there, or by requests before it) did not count it, so
the key could spend it again within its budget. It counts now, in memory and in Redis.
"""

from __future__ import annotations

import aiohttp
import openai
import pytest
from business import DEMO, biz_config, credits
from fleet import redis_url
from stores import fresh_database
from test_batches import chat_line, jsonl, wait_done

from plugins.accounts import ACCOUNTS

LOST = 7  # micro-USD: the cost of the line whose charge was lost


async def stored(running) -> None:
    """Every charge of this instance (and, with Redis, the ledger stream) in the store."""
    accounts = running.gw.services[ACCOUNTS]
    await accounts.writer.flush()
    if accounts.shared is not None:
        await accounts.writer.drain_shared()


@pytest.mark.parametrize("counters", ["memory", "redis"])
async def test_a_recovered_charge_counts_in_the_key_budget(start_gateway, tmp_path, counters):
    config = biz_config(enabled=["auth", "quotas", "pricing", "ledger", "batches"],
                        keys=[{"name": "demo", "key": DEMO, "credits": 5.0, "budgets": {"daily": 1.0}}],
                        batches={"poll_seconds": 0.05})
    async with fresh_database("sqlite" if counters == "memory" else "postgres", tmp_path) as url:
        config["storage"] = {"url": url, **({"counters": redis_url()} if counters == "redis" else {})}
        first = await start_gateway(config)
        async with openai.AsyncOpenAI(base_url=first.url, api_key=DEMO, max_retries=0) as client:
            f = await client.files.create(file=("in.jsonl", jsonl([chat_line(0)])), purpose="batch")
            batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            assert (await wait_done(client, batch.id)).request_counts.completed == 1
        await stored(first)
        # One more line answered whose charge a crash lost (before it reached the ledger or Redis).
        await first.gw.store.execute(
            "insert into tollway_batch_lines (batch_id, line, custom_id, body, status, status_code, cost_micro_usd) "
            "select batch_id, 1, 'lost', body, 'done', 200, ? from tollway_batch_lines where batch_id = ? and line = 0",
            (LOST, batch.id))
        await first.server.close()
        second = await start_gateway(config)  # its start charges the lost line
        async with aiohttp.ClientSession() as s:
            [budget] = (await credits(s, second, DEMO))["budgets"]
        await stored(second)
        rows = await second.gw.store.fetchall("select cost_micro_usd, error_code from tollway_ledger order by time")
        await second.server.close()
    assert [r[1] for r in rows] == [None, "batch_recovered"] and rows[1][0] == LOST
    assert budget["period"] == "daily" and budget["spent_micro_usd"] == sum(r[0] for r in rows)
