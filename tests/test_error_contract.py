"""The operator's error contract: extra fields (limit, used, resetAt), numeric codes,
a billing URL in 402 messages, and the API under server.base_path for both SDKs."""

from __future__ import annotations

import time
from datetime import datetime

import aiohttp
import anthropic
import openai
import pytest
from business import ADMIN_HEADERS, DEMO, bearer, biz_config, chat
from test_budgets import KEY_A, PRICE, paid_config

from proxy import ProxyError, hookimpl
from proxy.gateway import build_gateway
from proxy.schema import ConfigError


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_extra_fields_and_numeric_codes(start_gateway, mock_upstream):
    keys = [{"name": "a", "key": KEY_A, "credits": 1.0, "budgets": {"daily": PRICE / 1e6}},
            {"name": "r", "key": "sk-rate-limited-0001", "credits": 1.0, "limits": {"rpm": 1}}]
    config = paid_config(mock_upstream.url, keys, errors={"extra_fields": True, "numeric_code": True})
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running, KEY_A, model="up", max_tokens=8))[0] == 200
        status, headers, body = await chat(s, running, KEY_A, model="up", max_tokens=8)
        error = body["error"]
        assert status == 429 and error["code"] == 429 and error["reason"] == "budget_exceeded"
        assert (error["limit"], error["used"], error["period"]) == (PRICE / 1e6, PRICE / 1e6, "daily")
        assert error["resetAt"] == headers["X-RateLimit-Reset"]
        assert abs(parse_iso(error["resetAt"]) - time.time() - int(headers["Retry-After"])) <= 2

        assert (await chat(s, running, "sk-rate-limited-0001"))[0] == 200
        status, headers, body = await chat(s, running, "sk-rate-limited-0001")
        error = body["error"]
        assert status == 429 and error["reason"] == "rate_limit_exceeded"
        assert (error["limit"], error["used"]) == (1, 1)
        # resetAt is the moment Retry-After points at: when this request fits again.
        assert abs(parse_iso(error["resetAt"]) - time.time() - int(headers["Retry-After"])) <= 2

        status, _, body = await chat(s, running, KEY_A, model="nope")
        assert status == 404 and body["error"]["code"] == 404 and body["error"]["reason"]
        async with s.get(running.root + "/admin/keys/none", headers=ADMIN_HEADERS) as r:
            body = await r.json()
            assert r.status == 404 and body["error"]["code"] == 404 and body["error"]["reason"] == "key_not_found"


async def test_by_default_the_body_is_openai_s_own(start_gateway):
    config = biz_config(keys=[{"name": "r", "key": DEMO, "credits": 1.0, "limits": {"rpm": 1}}])
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        await chat(s, running, DEMO)
        status, _, body = await chat(s, running, DEMO)
    assert status == 429 and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "rate_limit_exceeded"


async def test_402_messages_say_where_to_top_up(start_gateway, mock_upstream, close_at_end):
    keys = [{"name": "poor", "key": KEY_A, "credits": 0}, {"name": "frozen", "key": DEMO, "account": "ice"}]
    config = paid_config(mock_upstream.url, keys, accounts={"ice": {"credits": 5, "suspended": True}})
    config["billing"]["billing_url"] = "https://example.test/billing"
    running = await start_gateway(config)
    sdk = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=KEY_A, max_retries=0))
    with pytest.raises(openai.APIStatusError) as poor:
        await sdk.chat.completions.create(model="up", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert poor.value.status_code == 402 and poor.value.code == "insufficient_credits"
    assert poor.value.message.endswith("Top up at https://example.test/billing")
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, DEMO, model="up", max_tokens=8)
    assert status == 402 and body["error"]["code"] == "account_suspended"
    assert body["error"]["message"].endswith("Top up at https://example.test/billing")


async def test_the_api_under_a_base_path_for_both_sdks(start_gateway, close_at_end):
    config = biz_config()
    config["server"]["base_path"] = "/api/v1"
    running = await start_gateway(config)
    oa = close_at_end(openai.AsyncOpenAI(base_url=running.root + "/api/v1", api_key=DEMO, max_retries=0))
    answer = await oa.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    chunks = [c async for c in await oa.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hi"}], stream=True)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [m.id async for m in oa.models.list()] == ["echo"]
    an = close_at_end(anthropic.AsyncAnthropic(base_url=running.root + "/api", api_key=DEMO, max_retries=0))
    message = await an.messages.create(model="echo", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text
    with pytest.raises(anthropic.NotFoundError) as missing:
        await an.messages.create(model="nope", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["type"] == "error"  # Anthropic's shape under the base path too
    async with aiohttp.ClientSession() as s:
        async with s.get(running.root + "/api/v1/credits", headers=bearer(DEMO)) as r:
            assert r.status == 200 and (await r.json())["object"] == "credits"
        async with s.get(running.root + "/v1/models", headers=bearer(DEMO)) as r:
            assert r.status == 200  # /v1 is still served


async def test_keep_v1_false_serves_the_api_only_under_the_base_path(start_gateway):
    config = biz_config()
    config["server"].update({"base_path": "/llm", "keep_v1": False})
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, DEMO)
        assert status == 404 and body["error"]["code"] == "unknown_endpoint"
        async with s.post(running.root + "/llm/chat/completions", headers=bearer(DEMO),
                          json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200


@pytest.mark.parametrize(("server", "message"), [
    ({"base_path": "api/v1"}, "server.base_path: 'api/v1' is not a path like /api/v1"),
    ({"base_path": "/api/v1/"}, "is not a path like /api/v1"),
    ({"base_path": "/v1"}, "would overlap the gateway's own paths"),
    ({"base_path": "/admin/x"}, "would overlap"),
    ({"keep_v1": False}, "server.keep_v1: false needs a server.base_path"),
])
def test_base_path_mistakes(tmp_path, server, message):
    config = biz_config()
    config["server"].update(server)
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db"}
    with pytest.raises(ConfigError, match=message):
        build_gateway(config, path=tmp_path / "tollway.yaml")


def sse_data(raw: bytes) -> list[dict | str]:
    """A stream's ``data:`` payloads, parsed (``[DONE]`` as the text)."""
    import orjson

    out: list[dict | str] = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


class EndsStreamsWithALimit:
    """A plugin that ends a stream (of a request from ``user: "cut-me"``) at its first write
    with a limit error, as a plugin that meters output as it streams would."""

    @hookimpl
    async def tollway_stream_filter(self, call):
        body = call.body
        if "cut-me" not in (body.get("user"), (body.get("metadata") or {}).get("user_id")):
            return None
        seen = []

        def cut(data: bytes) -> bytes:
            seen.append(data)
            if len(seen) == 1:
                raise ProxyError(429, "output limit reached for this minute", code="output_limit",
                                 extra={"limit": 5, "used": 5, "resetAt": "2030-01-01T00:00:00Z"})
            return data

        return cut


@pytest.mark.parametrize("style", [{"extra_fields": True, "numeric_code": True}, {}])
async def test_an_error_that_ends_a_stream_has_the_codes_and_fields_of_the_same_error_before_it(
        start_gateway, mock_upstream, style):
    keys = [{"name": "a", "key": KEY_A, "credits": 1.0}]
    running = await start_gateway(paid_config(mock_upstream.url, keys, errors=style),
                                  plugins=[EndsStreamsWithALimit()])
    messages = [{"role": "user", "content": "hello"}]
    async with aiohttp.ClientSession() as s:
        # The upstream cuts the stream: the in-band error chunk, then [DONE].
        async with s.post(running.url + "/chat/completions", headers=bearer(KEY_A),
                          json={"model": "up", "messages": messages, "stream": True, "max_tokens": 8,
                                "mock": {"drop_after": 2}}) as r:
            events = sse_data(await r.read())
        assert r.status == 200 and events[-1] == "[DONE]"
        error = events[-2]["error"]
        if style:
            assert (error["code"], error["reason"]) == (502, "upstream_disconnected")
        else:
            assert error["code"] == "upstream_disconnected" and "reason" not in error
        # A plugin's limit error mid-stream: the fields it has, as a refusal before the stream would.
        async with s.post(running.url + "/chat/completions", headers=bearer(KEY_A),
                          json={"model": "up", "messages": messages, "stream": True, "max_tokens": 8,
                                "user": "cut-me"}) as r:
            events = sse_data(await r.read())
        error = events[-2]["error"]
        if style:
            assert {k: error[k] for k in ("code", "reason", "limit", "used", "resetAt")} == {
                "code": 429, "reason": "output_limit", "limit": 5, "used": 5, "resetAt": "2030-01-01T00:00:00Z"}
        else:
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "output_limit"
        # The Anthropic Messages stream: its own error event, with the extra fields when switched on.
        async with s.post(running.url + "/messages", headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
                          json={"model": "up", "messages": messages, "stream": True, "max_tokens": 8,
                                "metadata": {"user_id": "cut-me"}}) as r:
            raw = (await r.read()).decode()
        assert r.status == 200 and "event: error" in raw
        error = [e for e in sse_data(raw.encode()) if isinstance(e, dict) and e.get("type") == "error"][-1]["error"]
        assert error["type"] == "rate_limit_error"
        assert (error.get("limit"), error.get("resetAt")) == ((5, "2030-01-01T00:00:00Z") if style else (None, None))
        # The Responses API stream: its `error` event, likewise.
        async with s.post(running.url + "/responses", headers=bearer(KEY_A),
                          json={"model": "up", "input": "hello", "stream": True, "max_output_tokens": 8,
                                "user": "cut-me"}) as r:
            raw = (await r.read()).decode()
        assert r.status == 200
        error = [e for e in sse_data(raw.encode()) if isinstance(e, dict) and e.get("type") == "error"][-1]
        if style:
            assert {k: error[k] for k in ("code", "reason", "limit", "used", "resetAt")} == {
                "code": 429, "reason": "output_limit", "limit": 5, "used": 5, "resetAt": "2030-01-01T00:00:00Z"}
        else:
            assert error["code"] == "output_limit" and "limit" not in error
