"""AICredits' ``"cache": true`` with the cache plugin on: accepted, and it asks Anthropic
upstreams for prompt caching (``cache_control`` in the request Anthropic receives).

Before issue 17 the cache plugin read ``cache`` as its own control object and refused the
boolean with a 400.
"""

from __future__ import annotations

import anthropic
import openai
import pytest
from _translation import config

from benchmarks.mock_fixtures import LAST_KEY
from benchmarks.mock_fixtures import make_app as make_fixture_app

EPHEMERAL = {"type": "ephemeral"}
CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant for the café."},
    {"role": "user", "content": "What is on the menu?"},
    {"role": "assistant", "content": "Soup, salad and cake."},
    {"role": "user", "content": "Which one is vegan?"},
]


@pytest.fixture
async def env(aiohttp_server, start_gateway):
    mock = await aiohttp_server(make_fixture_app())
    cfg = config(str(mock.make_url("")).rstrip("/"))
    cfg["plugins"] = {"enabled": ["cache"]}
    running = await start_gateway(cfg)
    client = openai.AsyncOpenAI(base_url=running.url, api_key="sk-client", max_retries=0)
    yield running, mock, client
    await client.close()


def sent(mock) -> dict:
    return mock.app[LAST_KEY]["anthropic"]["body"]


def marked_blocks(body: dict) -> list[str]:
    """Where the upstream request carries cache_control: "system" and/or "messages[i]"."""
    out = []
    if isinstance(body.get("system"), list) and any(b.get("cache_control") == EPHEMERAL for b in body["system"]):
        out.append("system")
    for i, m in enumerate(body["messages"]):
        if isinstance(m["content"], list) and any(b.get("cache_control") == EPHEMERAL for b in m["content"]):
            out.append(f"messages[{i}]")
    return out


async def test_cache_true_marks_the_system_prompt_and_the_stable_prefix(env):
    _, mock, client = env
    raw = await client.chat.completions.with_raw_response.create(
        model="anthropic-text", messages=CONVERSATION, temperature=0, extra_body={"cache": True})
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content
    body = sent(mock)
    assert "cache" not in body  # Anthropic never sees the gateway's field
    assert body["system"] == [{"type": "text", "text": CONVERSATION[0]["content"], "cache_control": EPHEMERAL}]
    # the conversation before the newest question is the stable prefix; the question itself is not marked
    assert marked_blocks(body) == ["system", "messages[1]"]
    assert body["messages"][1]["content"][-1] == {"type": "text", "text": "Soup, salad and cake.",
                                                  "cache_control": EPHEMERAL}


@pytest.mark.parametrize("cache", [False, {"no_store": True}, None])
async def test_cache_false_and_the_object_form_ask_for_nothing(env, cache):
    _, mock, client = env
    extra = {} if cache is None else {"cache": cache}
    raw = await client.chat.completions.with_raw_response.create(
        model="anthropic-text", messages=CONVERSATION, temperature=0, extra_body=extra)
    assert raw.http_response.status_code == 200
    body = sent(mock)
    assert "cache" not in body and marked_blocks(body) == []


async def test_cache_true_from_an_anthropic_client_too(env):
    running, mock, _ = env
    client = anthropic.AsyncAnthropic(base_url=running.url.removesuffix("/v1"), api_key="sk-client",
                                      max_retries=0)
    try:
        msg = await client.messages.create(
            model="anthropic-text", max_tokens=100, system="Be brief.",
            messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": "Menu?"}],
            extra_body={"cache": True})
    finally:
        await client.close()
    assert msg.content
    body = sent(mock)
    assert "cache" not in body and marked_blocks(body) == ["system", "messages[1]"]


async def test_a_bad_cache_value_is_still_a_400_naming_it(env):
    _, _, client = env
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="anthropic-text", messages=CONVERSATION,
                                             extra_body={"cache": "yes"})
    assert err.value.body["param"] == "cache"


async def test_without_the_cache_plugin_an_anthropic_upstream_still_honours_cache_true(aiohttp_server,
                                                                                         start_gateway):
    mock = await aiohttp_server(make_fixture_app())
    running = await start_gateway(config(str(mock.make_url("")).rstrip("/")))  # no plugins at all
    async with openai.AsyncOpenAI(base_url=running.url, api_key="sk-client", max_retries=0) as client:
        await client.chat.completions.create(model="anthropic-text", messages=CONVERSATION,
                                             extra_body={"cache": True})
    body = sent(mock)
    assert "cache" not in body and marked_blocks(body) == ["system", "messages[1]"]
