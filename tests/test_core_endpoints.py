"""The OpenAI endpoints through the real server, read by the official openai SDK."""

from __future__ import annotations

import re

import aiohttp
import openai
import orjson
import pytest
from conftest import base_config

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def running(start_gateway, mock_upstream):
    return await start_gateway(base_config(mock_upstream.url))


@pytest.fixture
async def client(running):
    async with openai.AsyncOpenAI(base_url=running.url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.mark.parametrize("model", ["echo", "up"])
async def test_chat_non_stream(client, model):
    r = await client.chat.completions.create(model=model, messages=MESSAGES)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


async def test_mock_provider_is_deterministic(client):
    a = await client.chat.completions.create(model="echo", messages=MESSAGES)
    b = await client.chat.completions.create(model="echo", messages=MESSAGES)
    assert a.choices[0].message.content == b.choices[0].message.content == "hello there"


@pytest.mark.parametrize("model", ["echo", "up"])
async def test_stream_without_include_usage_has_no_usage_chunk(client, model):
    stream = await client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # Every chunk has a choice: clients that read choices[0] must not crash.
    assert all(c.choices and c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    full = await client.chat.completions.create(model=model, messages=MESSAGES)
    assert text == full.choices[0].message.content


@pytest.mark.parametrize("model", ["echo", "up"])
async def test_stream_with_include_usage_ends_with_usage_chunk(client, model):
    stream = await client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_gateway_always_asks_upstream_for_stream_usage(running, mock_upstream, client):
    stream = await client.chat.completions.create(model="up", messages=MESSAGES, stream=True)
    [c async for c in stream]
    async with aiohttp.ClientSession() as s, s.get(mock_upstream.make_url("/_mock/stats")) as r:
        sent = (await r.json())["last_body"]
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "upstream-model"  # the public name was swapped for the upstream's


async def test_stream_bytes_pass_through_unchanged(running, mock_upstream):
    """With include_usage the client gets exactly the upstream's bytes."""
    body = {"model": "upstream-model", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{mock_upstream.url}/chat/completions", json=body) as r:
            direct = await r.read()
        async with s.post(f"{running.url}/chat/completions", json={**body, "model": "up"}) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            via = await r.read()
    # The two calls may straddle a second: compare with timestamps zeroed.
    assert _zero_created(via) == _zero_created(direct)


def _zero_created(data: bytes) -> bytes:
    return re.sub(rb'"created":\d+', b'"created":0', data)


async def test_embeddings(client):
    r = await client.embeddings.create(model="up", input=["a", "b"])
    assert [d.index for d in r.data] == [0, 1]
    assert r.usage.prompt_tokens == 2
    r = await client.embeddings.create(model="echo", input="hello")
    assert len(r.data[0].embedding) == 16


async def test_models_list_and_get(client):
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["echo", "up"]
    up = await client.models.retrieve("up")
    extra = up.model_extra
    assert extra["pricing"] == {"currency": "USD", "unit": "1M tokens", "input": 1.0, "output": 2.0,
                                "cached_input": 1.0, "cache_write": 1.0}
    assert extra["context_window"] == 1000
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        await client.chat.completions.create(model="nope", messages=MESSAGES)
    assert exc.value.body["code"] == "model_not_found"
    assert exc.value.body["param"] == "model"


async def test_health_and_ready(running):
    async with aiohttp.ClientSession() as s:
        async with s.get(running.root + "/health") as r:
            assert r.status == 200 and await r.json() == {"status": "ok"}
        async with s.get(running.root + "/health/ready") as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"
        await running.gw.store.close()  # storage gone: not ready
        async with s.get(running.root + "/health/ready") as r:
            assert r.status == 503
            assert orjson.loads(await r.read())["status"] == "not ready"
        await running.gw.store.connect()


async def test_each_provider_has_its_own_pool_with_the_configured_limit(running):
    upstream = running.gw.providers["up"].upstream
    assert upstream.connections.limit == 1000  # not aiohttp's default of 100
    assert running.gw.providers["local"].upstream.connections is None  # the mock opens no connections


async def test_models_read_by_the_anthropic_sdk(running):
    import anthropic

    async with anthropic.AsyncAnthropic(base_url=running.root, api_key="unused") as client:
        page = await client.models.list()
        assert [m.id for m in page.data] == ["echo", "up"]
        up = await client.models.retrieve("up")
    assert up.type == "model" and up.display_name == "up" and up.max_input_tokens == 1000
    assert up.created_at is not None
