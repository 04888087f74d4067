"""Admission in memory runs at once (no coroutine: ``claims.run_admission``, ``Counters.admit_now``),
still all or none: through the real server, a refusal by one scope takes nothing from the
others, and what the client is told (status, headers, cost) is what the account and the
ledger hold."""

from __future__ import annotations

import aiohttp
import pytest
from business import bearer, biz_config, chat, credits, ledger_rows

from plugins.accounts import ACCOUNTS
from plugins.accounts.counters import COUNTERS
from plugins.accounts.money import format_usd

KEY = "sk-test-admission-0001"


async def test_a_credit_refusal_takes_no_rate_and_a_rate_refusal_no_credit(start_gateway):
    """rpm 2 and $0.02: a 402 (the worst case does not fit) leaves both requests of the
    minute; two answers are charged exactly what they said; the third is a 429 that holds
    and charges nothing."""
    keys = [{"name": "both", "key": KEY, "credits": 0.02, "limits": {"rpm": 2}}]
    running = await start_gateway(biz_config(keys=keys))
    async with aiohttp.ClientSession() as s:
        status, headers, body = await chat(s, running, KEY, max_tokens=10**6)
        assert status == 402 and body["error"]["code"] == "insufficient_credits"
        charged = []
        for _ in range(2):
            status, headers, body = await chat(s, running, KEY, max_tokens=20)
            assert status == 200, body
            assert headers["x-ratelimit-limit-requests"] == "2"
            charged.append(round(body["usage"]["cost"] * 1e6))
            assert headers["x-tollway-cost"] == format_usd(charged[-1])
        assert headers["x-ratelimit-remaining-requests"] == "0"
        status, headers, body = await chat(s, running, KEY, max_tokens=20)
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert int(headers["Retry-After"]) >= 1
        got = await credits(s, running, KEY)
    assert got["balance_micro_usd"] == 20_000 - sum(charged) and got["reserved_micro_usd"] == 0
    rows = await ledger_rows(running, "status", "error_code", "cost")
    assert rows == [{"status": 402, "error_code": "insufficient_credits", "cost": 0},
                    *({"status": 200, "error_code": None, "cost": c} for c in charged),
                    {"status": 429, "error_code": "rate_limit_exceeded", "cost": 0}]
    account = running.gw.services[ACCOUNTS].account_of(running.gw.services[ACCOUNTS].key_for(KEY))
    assert account.reserved == 0 and account.balance == 20_000 - sum(charged)


async def test_the_rate_limiter_alone_admits_and_refuses_at_once(start_gateway):
    """Without quotas, the rate limiter's own admit_claims runs the admission: concurrency and
    rpm taken, given back at finish, refused with its headers."""
    keys = [{"name": "rl", "key": KEY, "limits": {"rpm": 1, "concurrency": 1}}]
    running = await start_gateway(biz_config(keys=keys, enabled=["auth", "ratelimit"]))
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await chat(s, running, KEY)
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
        async with s.post(running.url + "/chat/completions", headers=bearer(KEY),
                          json={"model": "echo", "messages": [{"role": "user", "content": "again"}]}) as r:
            assert r.status == 429
            assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
            assert r.headers["x-ratelimit-remaining-requests"] == "0" and int(r.headers["Retry-After"]) >= 1
    counters = running.gw.services[COUNTERS]
    assert counters.in_flight.get(running.gw.services[ACCOUNTS].key_for(KEY).id, 0) == 0


@pytest.mark.parametrize("price", [{"input": 1, "output": 2}, {"input": 600_000, "output": 1},
                                   {"input": 0, "output": 0}])
async def test_the_cost_told_is_the_cost_charged_and_recorded_at_any_size(start_gateway, price):
    """Under a unit, above one, and zero: ``x-tollway-cost`` (formatted in place under a unit),
    ``usage.cost``, the balance and the ledger row (with the deployment it went to) agree."""
    config = biz_config(keys=[{"name": "rich", "key": KEY, "credits": 1000.0}])
    config["models"]["echo"]["price"] = price
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, headers, body = await chat(s, running, KEY, max_tokens=20)
        assert status == 200, body
        usage = body["usage"]
        cost = usage["prompt_tokens"] * price["input"] + usage["completion_tokens"] * price["output"]
        assert headers["x-tollway-cost"] == format_usd(cost) and round(usage["cost"] * 1e6) == cost
        assert (cost >= 1_000_000) == (price["input"] > 1000)  # (the second case costs more than a unit)
        assert (await credits(s, running, KEY))["spent_micro_usd"] == cost
    rows = await ledger_rows(running, "status", "cost", "attempts", "deployments")
    assert rows == [{"status": 200, "cost": cost, "attempts": 1, "deployments": '["local/echo"]'}]
