"""Rate limits: GCRA per key and per model, headers on every answer, 429 with Retry-After."""

from __future__ import annotations

import asyncio
import re
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import openai
import pytest
from business import bearer, biz_config, chat, credits
from fleet import COUNTER_KINDS, redis_url

import plugins.ratelimit
from plugins.accounts.gcra import duration
from plugins.accounts.redis_lease_stock import IDLE_S
from proxy import hookimpl

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
KEY = "sk-limited-000000"


def limited(limits: dict, **extra) -> dict:
    config = biz_config(keys=[{"name": "lim", "key": KEY, "credits": 10, "limits": limits}], **extra)
    config["models"]["echo2"] = {"provider": "local", "price": {"input": 1.0, "output": 2.0}}
    return config


async def test_rpm_headers_then_429(start_gateway):
    running = await start_gateway(limited({"rpm": 2}))
    async with aiohttp.ClientSession() as s:
        status, h1, _ = await chat(s, running, KEY)
        assert status == 200
        assert (h1["x-ratelimit-limit-requests"], h1["x-ratelimit-remaining-requests"]) == ("2", "1")
        assert h1["x-ratelimit-reset-requests"] in ("30s", "29s")
        assert (h1["X-RateLimit-Limit"], h1["X-RateLimit-Remaining"]) == ("2", "1")
        assert ISO.match(h1["X-RateLimit-Reset"])
        assert "x-ratelimit-limit-tokens" not in h1
        status, h2, _ = await chat(s, running, KEY)
        assert status == 200 and h2["x-ratelimit-remaining-requests"] == "0"
        assert h2["x-ratelimit-reset-requests"] in ("1m0s", "59s")
        status, h3, body = await chat(s, running, KEY)
    assert status == 429
    assert 1 <= int(h3["Retry-After"]) <= 30
    assert h3["x-ratelimit-remaining-requests"] == "0" and h3["X-RateLimit-Limit"] == "2"
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded"
    assert "requests per minute (limit 2)" in body["error"]["message"]


async def test_sdk_sees_429(start_gateway, close_at_end):
    running = await start_gateway(limited({"rpm": 1}))
    client = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=KEY, max_retries=0))
    await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a"}])
    assert err.value.response.headers["retry-after"]


async def test_streams_carry_the_headers(start_gateway, close_at_end):
    running = await start_gateway(limited({"rpm": 10, "tpm": 10000}))
    client = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=KEY))
    async with client.chat.completions.with_streaming_response.create(
            model="echo", messages=[{"role": "user", "content": "a b c"}], stream=True) as resp:
        headers = resp.headers
        assert [c async for c in await resp.parse()]
    assert headers["x-ratelimit-limit-requests"] == "10" and headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 10000


async def test_tokens_are_reconciled_with_usage(start_gateway):
    running = await start_gateway(limited({"tpm": 100000}))
    async with aiohttp.ClientSession() as s:
        # max_tokens inflates the estimate; the usage brings it back down.
        status, h1, body = await chat(s, running, KEY, max_tokens=50000)
        assert status == 200
        after_first = int(h1["x-ratelimit-remaining-tokens"])
        assert after_first < 50000
        status, h2, _ = await chat(s, running, KEY, max_tokens=1)
        used = body["usage"]["total_tokens"]
        # Second request's remaining = limit - first's real usage - second's estimate (tokens refill at
        # 1666/s, so allow for the time between the two requests).
        assert 100000 - used - 200 <= int(h2["x-ratelimit-remaining-tokens"]) <= 100000 - used


async def test_request_larger_than_the_tpm_limit(start_gateway):
    running = await start_gateway(limited({"tpm": 100}))
    async with aiohttp.ClientSession() as s:
        status, headers, body = await chat(s, running, KEY, max_tokens=500)
    # Waiting would not help: a 413 that says so, without a Retry-After.
    assert status == 413 and "Retry-After" not in headers
    assert body["error"]["code"] == "request_exceeds_limit" and body["error"]["param"] == "max_tokens"
    assert "tokens per minute limit of 100 for key 'lim' on their own" in body["error"]["message"]


async def test_per_model_override(start_gateway):
    running = await start_gateway(limited({"rpm": 100, "models": {"echo": {"rpm": 1}}}))
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await chat(s, running, KEY, model="echo")
        assert status == 200 and headers["x-ratelimit-limit-requests"] == "1"  # the tightest limit is shown
        status, _, body = await chat(s, running, KEY, model="echo")
        assert status == 429 and "requests per minute for echo (limit 1)" in body["error"]["message"]
        status, headers, _ = await chat(s, running, KEY, model="echo2")
        assert status == 200 and headers["x-ratelimit-limit-requests"] == "100"


async def test_rpd(start_gateway):
    running = await start_gateway(limited({"rpd": 1, "rpm": 50}))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running, KEY))[0] == 200
        status, headers, body = await chat(s, running, KEY)
    assert status == 429 and "requests per day" in body["error"]["message"]
    assert int(headers["Retry-After"]) > 80000


async def test_concurrency_limit(start_gateway):
    config = limited({"concurrency": 1})
    config["providers"]["local"]["chunk_delay"] = 0.02
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        payload = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "a b c d e f"}]}
        async with s.post(running.url + "/chat/completions", json=payload, headers=bearer(KEY)) as slow:
            assert slow.status == 200
            await slow.content.readline()  # admitted and streaming
            status, headers, body = await chat(s, running, KEY)
            assert status == 429 and headers["Retry-After"] == "1"
            assert body["error"]["code"] == "concurrency_limit_exceeded"
            await slow.read()
        assert (await chat(s, running, KEY))[0] == 200


async def test_unlimited_key_gets_no_headers(start_gateway):
    running = await start_gateway(limited({}))
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await chat(s, running, KEY)
    assert status == 200 and not any(h.lower().startswith("x-ratelimit") for h in headers)


async def test_refusals_cost_nothing(start_gateway):
    running = await start_gateway(limited({"rpm": 1}))
    async with aiohttp.ClientSession() as s:
        await chat(s, running, KEY)
        spent = (await credits(s, running, KEY))["spent_micro_usd"]
        assert (await chat(s, running, KEY))[0] == 429
        assert (await credits(s, running, KEY))["spent_micro_usd"] == spent


class NoCount:
    @hookimpl
    async def tollway_admit(self, call):
        call.billing.count_for_limits = False


async def test_calls_that_do_not_count_give_their_tokens_back(start_gateway):
    running = await start_gateway(limited({"tpm": 100000}), plugins=[NoCount()])
    async with aiohttp.ClientSession() as s:
        _, h1, _ = await chat(s, running, KEY, max_tokens=40000)
        assert int(h1["x-ratelimit-remaining-tokens"]) < 60000
        _, h2, _ = await chat(s, running, KEY, max_tokens=1)
    assert int(h2["x-ratelimit-remaining-tokens"]) >= 99000


@pytest.mark.parametrize("seconds,text", [(0.0121, "13ms"), (1, "1s"), (59.5, "1m0s"), (360, "6m0s"),
                                          (3723, "1h2m3s"), (0, "0ms")])
def test_duration_format(seconds, text):
    assert duration(seconds) == text


async def test_header_names_go_out_as_written(start_gateway):
    """The request id, limit, routing and cost headers keep the case and order they always had
    on the wire (their names are multidict ``istr``s, for speed: the bytes must not change)."""
    running = await start_gateway(limited({"rpm": 10, "tpm": 10000}))
    async with aiohttp.ClientSession() as s, s.post(
            running.url + "/chat/completions", headers=bearer(KEY),
            json={"model": "echo", "messages": [{"role": "user", "content": "a"}]}) as r:
        assert r.status == 200
        names = [name.decode() for name, _ in r.raw_headers]
    ours = [n for n in names if n.lower().startswith(("x-ratelimit", "x-tollway"))]
    assert ours == ["x-tollway-request-id", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                    "x-tollway-model", "x-tollway-provider", "x-tollway-attempts", "x-tollway-cost"]


class KeepEstimates:
    """The answers come without usage (the tokens limit keeps each request's estimate)."""

    @hookimpl(tryfirst=True)
    async def tollway_settle(self, call):
        call.billing.usage = None


@asynccontextmanager
async def redis_keys_kept(counters_url: str, on: bool) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """``keep()``: each rule's key in Redis (prefix of ``counters_url``) lives an hour from now. Redis
    expires a rule's key on the real clock, a second after its debt is paid; with the test's clock
    stopped, a second between two requests (a loaded machine; a lease given back after IDLE_S
    unused) expired the requests rule's key, and the next request counted from a fresh limit."""
    if not on:
        async def nothing() -> None:
            pass

        yield nothing
        return
    import redis.asyncio as aioredis

    redis = aioredis.from_url(counters_url.split("?")[0])
    prefix = counters_url.partition("prefix=")[2]

    async def keep() -> None:
        for key in await redis.keys(prefix + "rl2:*"):
            await redis.pexpire(key, 3_600_000)

    try:
        yield keep
    finally:
        await redis.aclose()


@pytest.mark.parametrize("counters", COUNTER_KINDS)
async def test_extreme_limits_count_exactly(start_gateway, monkeypatch, counters):
    """rpm 1e8 and tpm 1e10, the clock stopped at a time of today: every answer's remaining
    counts are exact, and the tokens limit refuses exactly when its minute is spent. (With
    the TATs kept as absolute floats, ~2.4e-7 s apart at today's Unix times, a request of
    rpm 1e8 counted 0.8 or 1.2 and a few tokens of tpm 1e10 counted nothing: admitted forever.)"""
    now = float(int(time.time()))
    monkeypatch.setattr(plugins.ratelimit, "time", types.SimpleNamespace(time=lambda: now))
    config = biz_config(keys=[{"name": "lim", "key": KEY, "limits": {"rpm": 100_000_000, "tpm": 10_000_000_000}}],
                        enabled=["auth", "ratelimit"])
    url = redis_url()
    if counters == "redis":
        config["storage"] = {"counters": url}
    running = await start_gateway(config, plugins=[KeepEstimates()])
    async with aiohttp.ClientSession() as s, redis_keys_kept(url, counters == "redis") as keep:
        status, headers, _ = await chat(s, running, KEY, max_tokens=10_000_000_000 - 2000)
        await keep()
        assert status == 200 and headers["x-ratelimit-remaining-requests"] == "99999999"
        first_left = left = int(headers["x-ratelimit-remaining-tokens"])
        assert 1900 < left < 2000  # the limit less this request's estimate (its body and max_tokens)
        costs = []
        while len(costs) < 1000:
            if len(costs) == 7:  # a pause (a loaded machine's), past IDLE_S: Redis leases go back
                await asyncio.sleep(IDLE_S * 1.5)
            status, headers, body = await chat(s, running, KEY, max_tokens=1)
            await keep()
            if status != 200:
                break
            costs.append(left - int(headers["x-ratelimit-remaining-tokens"]))
            left -= costs[-1]
            assert headers["x-ratelimit-remaining-requests"] == str(100_000_000 - 1 - len(costs))
    assert status == 429 and "tokens per minute (limit 10000000000)" in body["error"]["message"]
    cost = costs[0]  # the same small request each time: the same estimate
    assert cost > 1 and set(costs) == {cost}
    assert len(costs) == first_left // cost and left == first_left % cost
