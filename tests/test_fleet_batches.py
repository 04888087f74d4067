"""Batches in a fleet (PostgreSQL and Redis shared by two gateways): each line runs once.

Every instance's batch runner read the oldest batch's pending lines and ran them: a line
still running on one instance was pending for the other, so both sent it upstream and
both charged it. The ledger kept one row (its id is the line's), so the stored balance
paid once while Redis, what the fleet lets the account spend, was charged twice (and the
operator paid the upstream twice). One instance of the fleet runs batches at a time now
(the store's claim ``batches``, dropped when its process dies).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
from aiohttp import web
from business import DEMO, biz_config, credits
from fleet import redis_url
from stores import fresh_database
from test_batches import jsonl, wait_done

from plugins.accounts import ACCOUNTS

pytestmark = pytest.mark.fleet

LINES = 4


async def test_a_line_runs_once_in_a_fleet_of_two(start_gateway, serve_upstream, tmp_path):
    calls: dict[str, int] = {}
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def completions(request):
        body = await request.json()
        said = body["messages"][0]["content"]
        calls[said] = calls.get(said, 0) + 1
        if sum(calls.values()) in (LINES, 2 * LINES):
            arrived.set()
        await release.wait()
        return web.json_response({"id": "c1", "object": "chat.completion", "created": int(time.time()),
                                  "model": "upstream-model",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    upstream = await serve_upstream({"POST /v1/chat/completions": completions})
    config = biz_config(upstream.url, enabled=["auth", "quotas", "pricing", "ledger", "batches"],
                        batches={"concurrency": LINES, "poll_seconds": 3600})
    async with fresh_database("postgres", tmp_path) as url:
        config["storage"] = {"url": url, "counters": redis_url()}
        first = await start_gateway(config)
        second = await start_gateway(config)
        lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "up", "max_tokens": 20, "messages": [{"role": "user", "content": f"line {i}"}]}}
                 for i in range(LINES)]
        async with openai.AsyncOpenAI(base_url=first.url, api_key=DEMO, max_retries=0) as client, \
                aiohttp.ClientSession() as s:
            start = (await credits(s, first, DEMO))["balance_micro_usd"]
            f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            await arrived.wait()  # the first instance runs every line, each waiting upstream
            arrived.clear()
            # The second instance's runner looks now, while they are still pending.
            other = asyncio.ensure_future(second.gw.pm.get_plugin("builtin:batches").runner.step())
            await asyncio.wait({other, asyncio.ensure_future(arrived.wait())}, return_when=asyncio.FIRST_COMPLETED)
            release.set()
            await other
            assert (await wait_done(client, batch.id)).request_counts.completed == LINES
            for running in (first, second):
                await running.gw.services[ACCOUNTS].writer.drain_shared()
            fleet = (await credits(s, first, DEMO))["balance_micro_usd"]
        rows = await first.gw.store.fetchall("select id, cost_micro_usd from tollway_ledger where id like 'batch-%'")
        stored = await first.gw.store.fetchone("select balance_micro_usd from tollway_accounts where id = 'cfg_demo'")
        for running in (second, first):
            await running.server.close()  # (before their schema goes)
    assert calls == {f"line {i}": 1 for i in range(LINES)}
    assert len(rows) == LINES
    charged = sum(cost for _, cost in rows)
    assert charged > 0
    assert fleet == stored[0] == start - charged  # Redis, the store and the ledger agree
