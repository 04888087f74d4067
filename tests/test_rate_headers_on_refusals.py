"""What an answer's rate-limit headers say when another scope of the same admission refused,
through the real server: the limits as they were (the rate claim was checked and fits, but
nothing was taken: ``claims.admit_local``), then each admitted answer one step down; and the
counters hold exactly what the admitted answers took."""

from __future__ import annotations

import aiohttp
from business import biz_config, chat

from plugins.accounts import ACCOUNTS
from plugins.accounts.counters import COUNTERS

KEY = "sk-test-rate-refusals-0001"


async def test_a_credit_refusal_shows_every_limit_untaken(start_gateway):
    """rpm 3, rpd 10 and tpm 10^7 on $0.02: a 402 (its worst case does not fit) shows each limit
    whole, twice; the admitted answers then count down from the whole limit."""
    keys = [{"name": "capped", "key": KEY, "credits": 0.02, "limits": {"rpm": 3, "rpd": 10, "tpm": 10_000_000}}]
    running = await start_gateway(biz_config(keys=keys))
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            status, headers, body = await chat(s, running, KEY, max_tokens=10**6)
            assert status == 402 and body["error"]["code"] == "insufficient_credits"
            assert headers["x-ratelimit-limit-requests"] == "3"
            assert headers["x-ratelimit-remaining-requests"] == "3"
            assert headers["X-RateLimit-Remaining"] == "3"
            assert headers["x-ratelimit-remaining-tokens"] == "10000000"
            assert headers["x-ratelimit-reset-requests"] == "0ms"
            assert headers["x-ratelimit-reset-tokens"] == "0ms"
        left = []
        for _ in range(3):
            status, headers, body = await chat(s, running, KEY, max_tokens=20)
            assert status == 200, body
            left.append(headers["x-ratelimit-remaining-requests"])
            assert int(headers["x-ratelimit-remaining-tokens"]) < 10_000_000
        assert left == ["2", "1", "0"]
        status, headers, body = await chat(s, running, KEY, max_tokens=20)
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    accounts = running.gw.services[ACCOUNTS]
    key = accounts.key_for(KEY)
    tats = running.gw.services[COUNTERS].tats
    rpm, rpd = tats[(key.id, "", "rpm")], tats[(key.id, "", "rpd")]
    # Three requests taken, no more: three intervals of debt (20 s, 8640 s), less the time between the takes.
    assert 3 * 20.0 - 5 < rpm[1] <= 3 * 20.0
    assert 3 * 8640.0 - 5 < rpd[1] <= 3 * 8640.0
    assert accounts.account_of(key).reserved == 0


async def test_a_rate_refusal_takes_no_concurrency_slot(start_gateway):
    """concurrency 2 and rpm 1: the 429 (rpm) holds no slot, before or after the admitted answer's is freed."""
    keys = [{"name": "slots", "key": KEY, "limits": {"rpm": 1, "concurrency": 2}}]
    running = await start_gateway(biz_config(keys=keys, enabled=["auth", "ratelimit"]))
    counters = running.gw.services[COUNTERS]
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await chat(s, running, KEY)
        assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"
        for _ in range(3):
            status, headers, body = await chat(s, running, KEY)
            assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
            assert headers["x-ratelimit-remaining-requests"] == "0"
    assert counters.in_flight == {}
