"""An account's rate limits (rpm, tpm, rpd) are shared by all of its keys."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from business import admin, biz_config, chat

KEY_A, KEY_B = "sk-shared-limit-a-0001", "sk-shared-limit-b-0002"


def shared(limits: dict, key_limits: dict | None = None) -> dict:
    config = biz_config(keys=[{"name": "a", "key": KEY_A, "account": "acme", "limits": key_limits or {}},
                              {"name": "b", "key": KEY_B, "account": "acme"}])
    config["accounts"] = {"acme": {"credits": 10, "limits": limits}}
    return config


async def test_an_account_rpm_is_shared_by_its_keys(start_gateway, close_at_end):
    running = await start_gateway(shared({"rpm": 3}))
    a = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=KEY_A, max_retries=0))
    b = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=KEY_B, max_retries=0))
    seen = []
    for sdk in (a, b, a):
        raw = await sdk.chat.completions.with_raw_response.create(model="echo", messages=[{"role": "user",
                                                                                           "content": "hi"}])
        seen.append(raw.headers["x-ratelimit-remaining-requests"])
    assert seen == ["2", "1", "0"]
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(openai.RateLimitError) as refused:
        await b.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "rate_limit_exceeded"
    assert "requests per minute of account 'acme' (shared by its keys) (limit 3)" in refused.value.message
    assert int(refused.value.response.headers["Retry-After"]) == 20  # one request every 20 s


async def test_the_tightest_of_key_and_account_limits_applies(start_gateway):
    running = await start_gateway(shared({"rpm": 10}, key_limits={"rpm": 1}))
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running, KEY_A))[0] == 200
        status, _, body = await chat(s, running, KEY_A)
        assert status == 429 and "for key 'a'" in body["error"]["message"]
        assert (await chat(s, running, KEY_B))[0] == 200  # b has the account's 10 (8 left)


async def test_a_request_bigger_than_the_account_tpm_is_a_413(start_gateway):
    running = await start_gateway(shared({"tpm": 100}))
    async with aiohttp.ClientSession() as s:
        status, headers, body = await chat(s, running, KEY_B, max_tokens=500)
    assert status == 413 and "Retry-After" not in headers
    assert body["error"]["code"] == "request_exceeds_limit"
    assert "tokens per minute of account 'acme' (shared by its keys) limit of 100" in body["error"]["message"]


async def test_account_limits_through_the_admin_api(start_gateway):
    running = await start_gateway(biz_config(keys=[]))
    async with aiohttp.ClientSession() as s:
        status, _ = await admin(s, running, "POST", "/admin/accounts", json={"id": "team", "credits": 1})
        assert status == 201
        status, made = await admin(s, running, "POST", "/admin/keys", json={"name": "t", "account": "team",
                                                                            "credits": 0})
        assert [(await chat(s, running, made["key"]))[0] for _ in range(3)] == [200] * 3
        status, body = await admin(s, running, "PATCH", "/admin/accounts/team", json={"limits": {"rpm": 4}})
        assert status == 200 and body["limits"] == {"rpm": 4}
        codes = [(await chat(s, running, made["key"]))[0] for _ in range(5)]
        assert codes == [200] * 4 + [429]
        status, body = await admin(s, running, "PATCH", "/admin/accounts/team",
                                   json={"limits": {"concurrency": 3}})
        assert status == 400 and body["error"]["param"] == "limits"
