"""The money proof: hundreds of concurrent requests (stream and not, some cancelled
mid-way) at a key funded for a fraction of them. The balance never goes below zero,
every request that was charged paid exactly its price, and the ledger sums to the
money taken."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
from business import bearer, biz_config

from plugins.accounts import ACCOUNTS

KEY = "sk-funded-for-few"
PRICE = 8 * 1000  # 8 completion tokens (the mock upstream's 8 chunks) at $1000 per 1M tokens
FUNDED_FOR = 40
REQUESTS = 300


async def test_balance_never_negative_and_ledger_equals_money_taken(start_gateway, mock_upstream, close_at_end):
    config = biz_config(mock_upstream.url, keys=[{"name": "few", "key": KEY, "credits": FUNDED_FOR * PRICE / 1e6}])
    # Input is free and max_tokens is 8, so the worst case reserved equals the exact price.
    config["models"]["up"]["price"] = {"input": 0, "output": 1000}
    config["providers"]["up"]["max_connections"] = 1000
    running = await start_gateway(config)
    # A generous timeout: the SDK connects within 5 s by default, and 300 connections at once to this
    # in-process gateway on a loaded machine took longer (httpx ConnectTimeout, not an answer).
    sdk = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=KEY, max_retries=0, timeout=60))
    outcomes: list[str] = []
    mock = {"chunk_delay": 0.003, "delay": 0.01}

    async def sdk_call(i: int) -> None:
        try:
            await sdk.chat.completions.create(model="up", max_tokens=8, extra_body={"mock": mock},
                                              messages=[{"role": "user", "content": f"q{i}"}])
            outcomes.append("ok")
        except openai.APIStatusError as err:
            outcomes.append(str(err.status_code))

    async def raw_call(s: aiohttp.ClientSession, i: int, cancel: bool) -> None:
        payload = {"model": "up", "stream": True, "max_tokens": 8, "mock": mock,
                   "messages": [{"role": "user", "content": f"q{i}"}]}
        async with s.post(running.url + "/chat/completions", json=payload, headers=bearer(KEY)) as r:
            if r.status != 200:
                outcomes.append(str(r.status))
                return
            if cancel:
                await r.content.readline()
                r.close()
                outcomes.append("cancelled")
                return
            text = await r.text()
            assert text.endswith("data: [DONE]\n\n")
            outcomes.append("ok")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        tasks = []
        for i in range(REQUESTS):
            if i % 3 == 0:
                tasks.append(sdk_call(i))
            else:
                tasks.append(raw_call(s, i, cancel=i % 3 == 2))
        await asyncio.gather(*tasks)

    accounts = running.gw.services[ACCOUNTS]
    acc = accounts.accounts["cfg_few"]
    for _ in range(1000):  # cancelled streams are still being drained server-side
        if acc.reserved == 0:
            break
        await asyncio.sleep(0.01)
    await accounts.writer.flush()

    taken = FUNDED_FOR * PRICE - acc.balance
    assert acc.balance >= 0 and acc.reserved == 0
    assert outcomes.count("402") > 0 and outcomes.count("ok") > 0
    assert set(outcomes) <= {"ok", "402", "cancelled"}
    ledger = await running.gw.store.fetchall("select status, cost_micro_usd, client_gone from tollway_ledger")
    assert len(ledger) == REQUESTS
    charged = [cost for status, cost, _ in ledger if cost]
    assert all(cost == PRICE for cost in charged)  # each charged request paid exactly its price
    assert len(charged) * PRICE == taken  # successes x price == money taken
    assert sum(cost for _, cost, _ in ledger) == taken  # ledger == money taken
    assert outcomes.count("ok") <= len(charged) <= outcomes.count("ok") + outcomes.count("cancelled")
    assert sum(1 for status, cost, _ in ledger if status == 402) == outcomes.count("402")
    stored = await running.gw.store.fetchone(
        "select balance_micro_usd, spent_micro_usd from tollway_accounts where id = 'cfg_few'")
    assert stored == (acc.balance, taken)
