"""Credits and pricing: reservation, 402, exact settlement, cost shown to the client."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import aiohttp
import openai
import orjson
import pytest
from business import DEMO, bearer, biz_config, chat, credits, ledger_rows
from hypothesis import given
from hypothesis import strategies as st

from plugins.accounts import ACCOUNTS
from plugins.accounts.money import PriceTable, format_usd, multiplier_ppm
from proxy import CachedResponse, Usage, hookimpl
from proxy.config import Price


async def settled(running, account_id: str = "cfg_demo") -> None:
    """Wait until the account has no reservation in flight (handlers still draining)."""
    acc = running.gw.services[ACCOUNTS].accounts[account_id]
    for _ in range(500):
        if acc.reserved == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("reservations never settled")


async def ledger(running) -> list[dict]:
    return await ledger_rows(running, "status", "error_code", "prompt", "completion", "cost", "client_gone", "stream",
                             "estimated")


async def test_cost_in_body_header_and_stream(start_gateway, close_at_end):
    running = await start_gateway(biz_config())
    client = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=DEMO))
    raw = await client.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "one two three"}])
    answer = raw.parse()
    # echo costs $1 per 1M input and $2 per 1M output: micro-USD = prompt + 2 * completion.
    expected = answer.usage.prompt_tokens + 2 * answer.usage.completion_tokens
    assert answer.usage.model_extra["cost"] == pytest.approx(expected / 1e6)
    assert raw.headers["x-tollway-cost"] == format_usd(expected)

    stream = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a b"}],
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    stream_cost = usage.prompt_tokens + 2 * usage.completion_tokens
    assert usage.model_extra["cost"] == pytest.approx(stream_cost / 1e6)

    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, DEMO)
    assert got["balance_micro_usd"] == 5_000_000 - expected - stream_cost
    assert got["spent_micro_usd"] == expected + stream_cost and got["reserved_micro_usd"] == 0
    assert [r["cost"] for r in await ledger(running)] == [expected, stream_cost]


async def test_stream_without_include_usage_has_no_usage_chunk_but_is_billed(start_gateway):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        status, _, text = await chat(s, running, DEMO, stream=True)
        assert status == 200 and '"usage"' not in text and text.endswith("data: [DONE]\n\n")
        assert (await credits(s, running, DEMO))["spent_micro_usd"] > 0


async def test_402_says_what_was_needed_and_what_is_left(start_gateway, close_at_end):
    keys = [{"name": "poor", "key": "sk-poor-00000000", "credits": 0.001}]
    running = await start_gateway(biz_config(keys=keys))
    payload = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/chat/completions", data=payload,
                          headers={**bearer("sk-poor-00000000"), "Content-Type": "application/json"}) as r:
            assert r.status == 402
            body = await r.json()
        # Worst case: every body byte a prompt token ($1/1M) + 4096 default completion tokens ($2/1M).
        needed = len(payload) * 1 + 4096 * 2
        assert body["error"]["code"] == "insufficient_credits"
        assert body["error"]["type"] == "insufficient_quota"
        assert f"needs up to ${format_usd(needed)}" in body["error"]["message"]
        assert "has $0.001000 left" in body["error"]["message"]
        # A lower max_tokens fits the balance.
        status, _, answer = await chat(s, running, "sk-poor-00000000", content="hi", max_tokens=50)
        assert status == 200
        assert (await credits(s, running, "sk-poor-00000000"))["balance_micro_usd"] == (
            1000 - round(answer["usage"]["cost"] * 1e6))
    with pytest.raises(openai.APIStatusError) as err:
        await close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key="sk-poor-00000000", max_retries=0)) \
            .chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 402


async def test_upstream_failure_releases_the_reservation_and_a_cut_stream_pays_for_what_went_out(
        start_gateway, mock_upstream):
    running = await start_gateway(biz_config(mock_upstream.url))
    async with aiohttp.ClientSession() as s:
        status, _, _ = await chat(s, running, DEMO, model="up", mock={"status": 500})
        assert status == 502
        status, _, text = await chat(s, running, DEMO, model="up", stream=True, mock={"drop_after": 3})
        assert status == 200 and "error" in text
        status, _, text = await chat(s, running, DEMO, model="up", stream=True, mock={"no_done": True})
        assert status == 200 and "upstream_stream_cut" in text
        got = await credits(s, running, DEMO)
    rows = await ledger(running)
    # Nothing went out: free. Output went out before the cut: counted, billed, marked estimated.
    assert [(r["status"], r["cost"], r["estimated"]) for r in rows][0] == (502, 0, 0)
    assert all(r["cost"] > 0 and r["estimated"] == 1 and r["completion"] > 0 for r in rows[1:])
    assert got["reserved_micro_usd"] == 0
    assert got["spent_micro_usd"] == sum(r["cost"] for r in rows) == 5_000_000 - got["balance_micro_usd"]


async def test_client_hanging_up_mid_stream_is_billed_for_what_the_upstream_produced(start_gateway,
                                                                                       mock_upstream):
    running = await start_gateway(biz_config(mock_upstream.url))
    async with aiohttp.ClientSession() as s:
        payload = {"model": "up", "stream": True, "messages": [{"role": "user", "content": "go"}],
                   "mock": {"chunks": 30, "chunk_delay": 0.005}}
        async with s.post(running.url + "/chat/completions", json=payload, headers=bearer(DEMO)) as r:
            assert r.status == 200
            await r.content.readline()  # the first event, then hang up
            r.close()
        await settled(running)
        got = await credits(s, running, DEMO)
    [row] = await ledger(running)
    assert row["client_gone"] == 1 and row["completion"] == 30
    assert row["cost"] == row["prompt"] * 1 + 30 * 2
    assert got["balance_micro_usd"] == 5_000_000 - row["cost"]


async def test_no_usage_after_hang_up_charges_the_output_counted_not_the_worst_case(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url)
    config["server"]["disconnect_drain"] = {"seconds": 30, "max_bytes": 1}
    running = await start_gateway(config)
    body = orjson.dumps({"model": "up", "stream": True, "max_tokens": 100,
                         "messages": [{"role": "user", "content": "go"}],
                         "mock": {"chunks": 50, "chunk_delay": 0.005}})
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/chat/completions", data=body,
                          headers={**bearer(DEMO), "Content-Type": "application/json"}) as r:
            await r.content.readline()
            r.close()
        await settled(running)
        got = await credits(s, running, DEMO)
    worst_case = len(body) * 1 + 100 * 2
    [row] = await ledger(running)
    # The drain bound stopped the read before the usage event: what the upstream had produced
    # by then is counted (a word per chunk here), priced, and marked as an estimate.
    assert (row["client_gone"], row["estimated"], row["error_code"]) == (1, 1, "client_gone_drain_bound")
    assert 1 <= row["completion"] < 50 and row["prompt"] >= 1
    assert row["cost"] == row["prompt"] * 1 + row["completion"] * 2 < worst_case
    assert got["spent_micro_usd"] == row["cost"]


class FakeCache:
    """A lookup hit at a price multiplier, that does not count for limits."""

    def __init__(self, multiplier: float, usage: Usage) -> None:
        self.multiplier = multiplier
        self.usage = usage

    @hookimpl
    async def tollway_lookup(self, call):
        call.billing.price_multiplier = self.multiplier
        call.billing.count_for_limits = False
        call.response.cache_status = "hit"
        return CachedResponse(body={"id": "c1", "object": "chat.completion", "created": 1, "model": call.model,
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "cached"},
                                                 "finish_reason": "stop"}], "usage": self.usage.to_openai()},
                              usage=self.usage)


@pytest.mark.parametrize("multiplier,expected", [(1.0, 3000), (0.5, 1500), (0.0, 0), (1 / 3, 1000)])
async def test_price_multiplier_on_a_cache_hit(start_gateway, multiplier, expected):
    cache = FakeCache(multiplier, Usage(prompt_tokens=1000, completion_tokens=1000))
    running = await start_gateway(biz_config(), plugins=[cache])
    async with aiohttp.ClientSession() as s:
        status, headers, body = await chat(s, running, DEMO)
        assert status == 200 and body["choices"][0]["message"]["content"] == "cached"
        assert headers["x-tollway-cost"] == format_usd(expected)
        assert (await credits(s, running, DEMO))["spent_micro_usd"] == expected


async def test_cached_input_price(start_gateway):
    config = biz_config()
    config["models"]["echo"]["price"] = {"input": 2.0, "output": 3.0, "cached_input": 0.5}
    cache = FakeCache(1.0, Usage(prompt_tokens=1000, completion_tokens=10, cached_tokens=400))
    running = await start_gateway(config, plugins=[cache])
    async with aiohttp.ClientSession() as s:
        status, headers, body = await chat(s, running, DEMO)
    assert body["usage"]["cost"] == pytest.approx((600 * 2 + 400 * 0.5 + 10 * 3) / 1e6)
    assert headers["x-tollway-cost"] == "0.001430"


async def test_unmetered_key_is_never_refused_but_spend_is_recorded(start_gateway):
    keys = [{"name": "staff", "key": "sk-staff-0000000", "credits": None}]
    running = await start_gateway(biz_config(keys=keys))
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, "sk-staff-0000000", max_tokens=10**9)
        assert status == 200
        got = await credits(s, running, "sk-staff-0000000")
    assert got["unlimited"] is True and got["spent_micro_usd"] == round(body["usage"]["cost"] * 1e6) > 0


async def test_embeddings_are_priced(start_gateway, close_at_end):
    running = await start_gateway(biz_config())
    client = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=DEMO))
    raw = await client.embeddings.with_raw_response.create(model="echo", input=["some text to embed"])
    result = raw.parse()
    assert raw.headers["x-tollway-cost"] == format_usd(result.usage.prompt_tokens)
    async with aiohttp.ClientSession() as s:
        assert (await credits(s, running, DEMO))["spent_micro_usd"] == result.usage.prompt_tokens


def test_cost_rounds_up_to_the_micro_usd():
    table = PriceTable.from_config(Price(input=0.15, output=0.6), "p")
    assert table.cost(1, 0) == 1  # 0.15 micro-USD -> 1
    assert table.cost(20, 0) == 3  # 3.0 exactly
    assert table.cost(21, 0) == 4  # 3.15 -> 4
    assert table.cost(1_000_000, 1_000_000) == 750_000


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7),
       st.decimals(0, 1000, places=3), st.decimals(0, 1000, places=3), st.decimals(0, 1000, places=3),
       st.decimals(0, 1000, places=3), st.sampled_from([1.0, 0.5, 0.1, 0.25, 0.0, 2.0]))
def test_cost_is_exact(prompt, completion, cached, written, p_in, p_out, p_cached, p_write, multiplier):
    cached = min(cached, prompt)
    written = min(written, prompt - cached)
    price = Price(input=float(p_in), output=float(p_out), cached_input=float(p_cached), cache_write=float(p_write))
    table = PriceTable.from_config(price, "p")
    exact = (Fraction(prompt - cached - written) * Fraction(str(p_in)) + Fraction(cached) * Fraction(str(p_cached))
             + Fraction(written) * Fraction(str(p_write))
             + Fraction(completion) * Fraction(str(p_out))) * Fraction(str(multiplier))
    want = -(-exact.numerator // exact.denominator)
    assert table.cost(prompt, completion, cached, multiplier_ppm(multiplier), written) == want
