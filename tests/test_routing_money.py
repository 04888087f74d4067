"""Failover never spends money that was not held: a fallback dearer than the model asked for
grows the request's credit (and budget) hold before it is tried, or is refused; what the
client is told, the ledger and the balance agree. Memory counters and Redis counters."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from business import ALL, DEMO, bearer, biz_config, credits
from fleet import redis_url
from routing_helpers import ask, make_upstreams, routing_config

from plugins.accounts import ACCOUNTS

CHEAP = {"input": 1.0, "output": 2.0}
DEAR = {"input": 100.0, "output": 200.0}
MAX_TOKENS = 1000  # the worst case: ~100 prompt tokens + 1000 output -> cheap ~$0.0022, dear ~$0.22


def config(ups, counters: str, credits_usd: float, **key) -> dict:
    models = {"cheap": {"provider": "a", "model": "a-model", "price": CHEAP, "fallbacks": ["dear"]},
              "dear": {"provider": "b", "model": "b-model", "price": DEAR}}
    routed = routing_config(ups, models)
    biz = biz_config(enabled=ALL, keys=[{"name": "demo", "key": DEMO, "credits": credits_usd, **key}])
    biz["providers"].update(routed["providers"])
    biz["models"].update(routed["models"])
    biz["routing"] = routed["routing"]
    if counters == "redis":
        biz["storage"] = {"counters": redis_url()}
    return biz


async def start(start_gateway, tmp_path, ups, counters, credits_usd, **key):
    cfg = config(ups, counters, credits_usd, **key)
    cfg.setdefault("storage", {})["url"] = f"sqlite:///{tmp_path}/money.db"
    return await start_gateway(cfg)


async def ledger(running) -> list[tuple]:
    writer = running.gw.services.get(ACCOUNTS).writer
    await writer.flush()
    await writer.drain_shared()
    return await running.gw.store.fetchall(
        "select status, model, served_model, provider, cost_micro_usd, error_code from tollway_ledger "
        "order by time, id")


@pytest.mark.parametrize("counters", ["memory", "redis"])
async def test_a_dearer_fallback_the_key_cannot_afford_is_refused_and_nothing_is_charged(
        start_gateway, aiohttp_server, tmp_path, counters):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.fail("a", 503)
    running = await start(start_gateway, tmp_path, ups, counters, 0.05)  # cheap fits, dear does not
    async with aiohttp.ClientSession() as s:
        before = (await credits(s, running, DEMO))["balance_micro_usd"]
        status, headers, body = await ask(s, running, "cheap", headers=bearer(DEMO), max_tokens=MAX_TOKENS)
        after = await credits(s, running, DEMO)
    assert status == 402, body
    assert body["error"]["code"] == "insufficient_credits"
    message = body["error"]["message"]
    assert message.startswith("cheap failed and its fallback dear costs more; insufficient credits")
    assert "top it up" in message
    assert ups.all_hits() == {"a": 1, "b": 0}  # the dear one was never asked
    assert after["balance_micro_usd"] == before and after["reserved_micro_usd"] == 0
    assert await ledger(running) == [(402, "cheap", "cheap", "a", 0, "insufficient_credits")]
    # The cheap model itself still serves the key once it is back.
    ups.recover("a")
    async with aiohttp.ClientSession() as s:
        status, headers, body = await ask(s, running, "cheap", headers=bearer(DEMO), max_tokens=MAX_TOKENS)
        end = await credits(s, running, DEMO)
    assert status == 200 and headers["x-tollway-provider"] == "a"
    cost = round(body["usage"]["cost"] * 1e6)
    assert cost > 0 and end["balance_micro_usd"] == before - cost >= 0


@pytest.mark.parametrize("counters", ["memory", "redis"])
async def test_a_dearer_fallback_the_key_can_afford_is_held_served_and_billed_once(
        start_gateway, aiohttp_server, tmp_path, counters):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.fail("a", 503)
    running = await start(start_gateway, tmp_path, ups, counters, 0.3)
    async with aiohttp.ClientSession() as s:
        before = (await credits(s, running, DEMO))["balance_micro_usd"]
        status, headers, body = await ask(s, running, "cheap", headers=bearer(DEMO), max_tokens=MAX_TOKENS)
        after = await credits(s, running, DEMO)
    assert status == 200, body
    assert headers["x-tollway-model"] == "dear" and headers["x-tollway-attempts"] == "2"
    cost = round(body["usage"]["cost"] * 1e6)
    usage = body["usage"]
    assert cost == usage["prompt_tokens"] * 100 + usage["completion_tokens"] * 200  # dear's price
    assert after["balance_micro_usd"] == before - cost and after["reserved_micro_usd"] == 0
    assert await ledger(running) == [(200, "cheap", "dear", "b", cost, None)]


@pytest.mark.parametrize("counters", ["memory", "redis"])
async def test_concurrent_failovers_never_take_the_balance_below_zero(start_gateway, aiohttp_server, tmp_path,
                                                                      counters):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.fail("a", 503)
    ups.force("b", delay=1.0)  # every dear answer is still held when the last one asks
    running = await start(start_gateway, tmp_path, ups, counters, 0.5)  # two dear worst cases at most
    async with aiohttp.ClientSession() as s:
        before = (await credits(s, running, DEMO))["balance_micro_usd"]
        answers = await asyncio.gather(*(ask(s, running, "cheap", headers=bearer(DEMO), max_tokens=MAX_TOKENS)
                                         for _ in range(8)))
        after = await credits(s, running, DEMO)
    told = [round(body["usage"]["cost"] * 1e6) for status, _, body in answers if status == 200]
    refused = [body["error"]["code"] for status, _, body in answers if status != 200]
    assert 1 <= len(told) <= 2 and set(refused) == {"insufficient_credits"}, answers
    assert ups.hits("b") == len(told)
    rows = await ledger(running)
    assert sum(r[4] for r in rows) == sum(told) == before - after["balance_micro_usd"]
    assert after["balance_micro_usd"] >= 0 and after["reserved_micro_usd"] == 0


@pytest.mark.parametrize("counters", ["memory", "redis"])
async def test_a_budget_holds_the_dearer_fallback_too(start_gateway, aiohttp_server, tmp_path, counters):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.fail("a", 503)
    running = await start(start_gateway, tmp_path, ups, counters, 5.0, budgets={"daily": 0.05})
    async with aiohttp.ClientSession() as s:
        status, _, body = await ask(s, running, "cheap", headers=bearer(DEMO), max_tokens=MAX_TOKENS)
        after = await credits(s, running, DEMO)
    assert status == 400 and body["error"]["code"] == "budget_too_small", body
    message = body["error"]["message"]
    assert message.startswith("cheap failed and its fallback dear costs more; this request may cost up to $0.2")
    assert "more than the whole daily budget" in message
    assert ups.all_hits() == {"a": 1, "b": 0}
    assert after["balance_micro_usd"] == 5_000_000 and after["reserved_micro_usd"] == 0
    assert await ledger(running) == [(400, "cheap", "cheap", "a", 0, "budget_too_small")]
    ups.recover("a")
    async with aiohttp.ClientSession() as s:
        status, _, body = await ask(s, running, "cheap", headers=bearer(DEMO), max_tokens=MAX_TOKENS)
        [budget] = (await credits(s, running, DEMO))["budgets"]
    assert status == 200 and budget["spent_micro_usd"] == round(body["usage"]["cost"] * 1e6) > 0
