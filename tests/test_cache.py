"""The cache plugin end to end: a real gateway, the HTTP mock upstream, real clients.

Most tests use the ``hashing`` embedder (no model, fast start); the ones about
meaning use the default ``local`` MiniLM embedder.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
import openai
import pytest
from conftest import base_config

from proxy import hookimpl

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def cache_config(upstream: str, **options) -> dict:
    config = base_config(upstream)
    config["plugins"] = {"enabled": ["cache"], "cache": {"embedder": "hashing", "semantic": True,
                                                         "synonyms": options.get("embedder") == "local", **options}}
    return config


async def post(running, body: dict, headers: dict | None = None, key: str = "k") -> tuple[int, dict, dict]:
    """One request; then wait until its answer, if stored, has joined its bucket (a model embeds it in
    the background, after the client has the answer)."""
    async with aiohttp.ClientSession() as s, s.post(f"{running.url}/chat/completions", json=body,
                                                    headers={"Authorization": f"Bearer {key}", **(headers or {})}) as r:
        answer = r.status, dict(r.headers), await r.json()
    await settled(running)
    return answer


async def settled(running) -> None:
    """Wait until the calls in flight have settled (the cache stores in ``tollway_settle``, after the
    client has the answer) and every stored answer has joined its bucket."""
    handlers = list(running.gw.inflight.calls)
    if handlers:
        await asyncio.wait(handlers)
    plugin = cache_plugin(running)
    if plugin is not None:
        await plugin.joined()


async def upstream_stats(mock_upstream) -> dict:
    async with aiohttp.ClientSession() as s, s.get(mock_upstream.make_url("/_mock/stats")) as r:
        return await r.json()


def ask(text: str, **extra) -> dict:
    return {"model": "up", "messages": [{"role": "user", "content": text}], **extra}


def cache_plugin(running):
    return running.gw.pm.get_plugin("builtin:cache")


class KeyAuth:
    """A stand-in auth plugin: the bearer token is the key; ``accounts`` maps keys to accounts
    (a key not in it is its own account). Its principals are plain objects with the two
    attributes of ``proxy.Principal``."""

    def __init__(self, accounts: dict[str, str] | None = None) -> None:
        self.accounts = accounts or {}

    @hookimpl
    async def tollway_authenticate(self, call):
        key = call.request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return SimpleNamespace(id=f"key-{key}", account_id=self.accounts.get(key, f"acct-{key}"))


class Probe:
    """Records what settle sees (what the ledger and the pricing plugin read)."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    @hookimpl
    async def tollway_settle(self, call):
        billing = call.billing
        self.seen.append((call.response.cache_status, billing.price_multiplier, billing.count_for_limits,
                          billing.usage))


# -- exact layer ----------------------------------------------------------------------

async def test_exact_hit_never_reaches_the_upstream(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url, semantic=False))
    status, headers, first = await post(running, {"model": "up", "messages": QUESTION, "temperature": 0})
    assert status == 200 and headers["x-tollway-cache"] == "MISS"
    # Same request: other key order, extra whitespace inside the text, stream options irrelevant.
    again = {"temperature": 0, "messages": [{"content": "  What is the capital of  France?\n", "role": "user"}],
             "model": "up"}
    status, headers, second = await post(running, again)
    assert status == 200 and headers["x-tollway-cache"] == "HIT"
    assert second["choices"] == first["choices"]
    assert second["usage"]["completion_tokens"] == first["usage"]["completion_tokens"]
    assert (await upstream_stats(mock_upstream))["requests"] == 1


async def test_parameters_that_change_the_answer_are_part_of_the_key(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url, semantic=False))
    await post(running, {"model": "up", "messages": QUESTION, "temperature": 0})
    for variant in ({"temperature": 0.5}, {"seed": 7}, {"max_tokens": 5}, {"stop": ["x"]},
                    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
                    {"response_format": {"type": "json_object"}}, {"top_p": 0.5}):
        _, headers, _ = await post(running, {"model": "up", "messages": QUESTION, "temperature": 0, **variant})
        assert headers["x-tollway-cache"] == "MISS", variant
    assert (await upstream_stats(mock_upstream))["requests"] == 8


# -- semantic layer (real embedder) -----------------------------------------------------

async def test_semantic_hit_on_a_paraphrase_and_verified_near_miss(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url, embedder="local"))
    await post(running, {"model": "up", "messages": QUESTION})
    paraphrase = [{"role": "user", "content": "hey, what's the captial of France please?"}]
    _, headers, _ = await post(running, {"model": "up", "messages": paraphrase})
    assert headers["x-tollway-cache"] == "SEMANTIC-HIT"
    assert 0.5 <= float(headers["x-tollway-cache-similarity"]) < 1.0
    assert (await upstream_stats(mock_upstream))["requests"] == 1

    await post(running, ask("How do I start taking creatine?"))
    _, headers, _ = await post(running, ask("How do I stop taking creatine?"))
    assert headers["x-tollway-cache"] == "MISS"
    assert headers["x-tollway-cache-veto"] == "words"  # "start" / "stop": a difference nothing explains
    assert (await upstream_stats(mock_upstream))["requests"] == 3


async def test_semantic_layer_is_off_by_default(start_gateway, mock_upstream):
    config = cache_config(mock_upstream.url)
    del config["plugins"]["cache"]["semantic"]
    running = await start_gateway(config)
    assert cache_plugin(running).embeddings is None  # no model loaded at all
    await post(running, ask("What is the capital of France?"))
    _, headers, _ = await post(running, ask("what is the capital of France"))
    assert headers["x-tollway-cache"] == "MISS"
    _, headers, _ = await post(running, ask("What is the capital of France?"))
    assert headers["x-tollway-cache"] == "HIT"


async def test_semantic_per_model_and_exact_only_per_request(start_gateway, mock_upstream):
    config = cache_config(mock_upstream.url, embedder="local", exact_only_models=["coder*"])
    config["models"]["coder-1"] = dict(config["models"]["up"])
    running = await start_gateway(config)
    first, again = ask("Please, what is the capital of France?"), ask("What is the capital of France?")
    await post(running, {**first, "model": "coder-1"})
    _, headers, _ = await post(running, {**again, "model": "coder-1"})
    assert headers["x-tollway-cache"] == "MISS"  # a code model: exact only

    await post(running, first)
    _, headers, _ = await post(running, {**again, "cache": {"semantic": False}})
    assert headers["x-tollway-cache"] == "MISS"  # the client asked for exact matches only
    _, headers, _ = await post(running, again)
    assert headers["x-tollway-cache"] == "HIT"  # ... and its answer was stored for exact reuse
    _, headers, _ = await post(running, ask("what is the capital of France, please"))
    assert headers["x-tollway-cache"] == "SEMANTIC-HIT"


async def test_follow_up_after_a_different_subject_does_not_hit(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url, embedder="local"))

    def conversation(subject: str, answer: str) -> list[dict]:
        return [{"role": "user", "content": f"Who is {subject}?"}, {"role": "assistant", "content": answer},
                {"role": "user", "content": "and how old is he?"}]

    await post(running, {"model": "up", "messages": conversation("Lionel Messi", "An Argentine footballer.")})
    _, headers, _ = await post(running, {"model": "up",
                                         "messages": conversation("Roger Federer", "A Swiss tennis player.")})
    assert headers["x-tollway-cache"] == "MISS"
    _, headers, _ = await post(running, {"model": "up",
                                         "messages": conversation("Lionel Messi", "An Argentine footballer.")})
    assert headers["x-tollway-cache"] == "HIT"


async def test_system_prompt_separates_entries(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url, embedder="local"))
    await post(running, {"model": "up", "messages": [{"role": "system", "content": "Answer in French."}, *QUESTION]})
    _, headers, _ = await post(running, {"model": "up", "messages": [
        {"role": "system", "content": "Answer in German."}, *QUESTION]})
    assert headers["x-tollway-cache"] == "MISS"


async def test_upstream_embedder_goes_through_the_providers(start_gateway, mock_upstream):
    config = cache_config(mock_upstream.url, embedder="upstream", embedding_model="emb")
    config["models"]["emb"] = {"provider": "up", "model": "text-embedding-mock", "price": {"input": 0, "output": 0}}
    running = await start_gateway(config)
    await post(running, ask("Why is the sky blue?"))
    # The mock upstream gives every text the same vector, so only the verifier stands between these
    # (without synonyms: an upstream embedder is not asked about single words).
    _, headers, _ = await post(running, ask("Hey, why is the sky blue?"))
    assert headers["x-tollway-cache"] == "SEMANTIC-HIT"
    _, headers, _ = await post(running, ask("Why is the sky blue in Paris?"))
    assert headers["x-tollway-cache"] == "MISS" and headers["x-tollway-cache-veto"] == "words"
    stats = await upstream_stats(mock_upstream)
    assert stats["requests"] == 2 + 3  # two chat completions, three embeddings


async def test_a_miss_into_an_empty_bucket_goes_upstream_before_anything_is_embedded(start_gateway, mock_upstream):
    config = cache_config(mock_upstream.url, embedder="upstream", embedding_model="emb")
    config["models"]["emb"] = {"provider": "up", "model": "text-embedding-mock", "price": {"input": 0, "output": 0}}
    running = await start_gateway(config)
    plugin = cache_plugin(running)
    upstream_requests_when_embedding = []  # chat completions and embeddings the mock had seen
    embed = plugin._embed

    async def spy(forms):
        upstream_requests_when_embedding.append((await upstream_stats(mock_upstream))["requests"])
        return await embed(forms)

    plugin._embed = spy
    _, headers, _ = await post(running, ask("Why is the sky blue?"))
    assert headers["x-tollway-cache"] == "MISS"
    assert upstream_requests_when_embedding == [1]  # embedded to be stored, after the upstream answered
    _, headers, _ = await post(running, ask("Hey, why is the sky blue?"))  # now the bucket has a neighbour
    assert headers["x-tollway-cache"] == "SEMANTIC-HIT"
    assert upstream_requests_when_embedding == [1, 2]  # the lookup embeds it: one chat, one embedding before


async def test_the_default_retrieval_needs_no_model(start_gateway, mock_upstream):
    config = cache_config(mock_upstream.url, synonyms=False)
    del config["plugins"]["cache"]["embedder"]  # the default: lexical
    running = await start_gateway(config)
    plugin = cache_plugin(running)
    assert plugin.options.embedder == "lexical" and plugin.words is None
    await post(running, {"model": "up", "messages": QUESTION})
    paraphrase = [{"role": "user", "content": "hey, what's the captial of France please?"}]
    _, headers, _ = await post(running, {"model": "up", "messages": paraphrase})
    assert headers["x-tollway-cache"] == "SEMANTIC-HIT"
    _, headers, _ = await post(running, {"model": "up", "messages": [{"role": "user", "content":
                                                                      "What is the capital of Spain?"}]})
    assert headers["x-tollway-cache"] == "MISS" and headers["x-tollway-cache-veto"] == "words"
    assert (await upstream_stats(mock_upstream))["requests"] == 2


# -- client controls ------------------------------------------------------------------

@pytest.mark.parametrize("control", [
    {"body": {"cache": {"no_cache": True}}},
    {"body": {"no_cache": True}},
    {"headers": {"Cache-Control": "no-cache"}},
])
async def test_no_cache_bypasses_but_stores(start_gateway, mock_upstream, control):
    running = await start_gateway(cache_config(mock_upstream.url))
    await post(running, {"model": "up", "messages": QUESTION})
    body = {"model": "up", "messages": QUESTION, **control.get("body", {})}
    _, headers, _ = await post(running, body, control.get("headers"))
    assert headers["x-tollway-cache"] == "BYPASS"
    stats = await upstream_stats(mock_upstream)
    assert stats["requests"] == 2
    assert "cache" not in stats["last_body"] and "no_cache" not in stats["last_body"]  # stripped before upstream


@pytest.mark.parametrize("control", [
    {"body": {"cache": {"no_store": True}}},
    {"body": {"cache": {"ttl": 0}}},
    {"headers": {"Cache-Control": "no-store"}},
])
async def test_no_store_keeps_nothing(start_gateway, mock_upstream, control):
    running = await start_gateway(cache_config(mock_upstream.url))
    _, headers, _ = await post(running, {"model": "up", "messages": QUESTION, **control.get("body", {})},
                               control.get("headers"))
    assert headers["x-tollway-cache"] == "MISS"
    assert "cache" not in (await upstream_stats(mock_upstream))["last_body"]
    _, headers, _ = await post(running, {"model": "up", "messages": QUESTION})
    assert headers["x-tollway-cache"] == "MISS"
    assert len(cache_plugin(running).store) == 1


@pytest.mark.parametrize(("body", "param"), [
    ({"cache": "yes"}, "cache"),
    ({"cache": {"no_cache": "true"}}, "cache.no_cache"),
    ({"cache": {"no_store": 1}}, "cache.no_store"),
    ({"cache": {"ttl": -1}}, "cache.ttl"),
    ({"cache": {"ttl": "60"}}, "cache.ttl"),
    ({"cache": {"ttl": 10**9}}, "cache.ttl"),
    ({"cache": {"max_age": 5}}, "cache.max_age"),
    ({"no_cache": "yes"}, "no_cache"),
])
async def test_bad_controls_are_a_400_naming_the_field(start_gateway, mock_upstream, body, param):
    running = await start_gateway(cache_config(mock_upstream.url))
    status, _, answer = await post(running, {"model": "up", "messages": QUESTION, **body})
    assert status == 400
    assert answer["error"]["param"] == param
    assert (await upstream_stats(mock_upstream))["requests"] == 0


async def test_client_ttl_and_expiry(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url, ttl=100))
    store = cache_plugin(running).store
    now = [1_000_000.0]
    store.clock = lambda: now[0]
    await post(running, {"model": "up", "messages": QUESTION})
    await post(running, ask("Why is the sky blue?", cache={"ttl": 5}))
    now[0] += 6
    _, headers, _ = await post(running, ask("Why is the sky blue?"))
    assert headers["x-tollway-cache"] == "MISS"  # its own ttl of 5 s passed
    _, headers, _ = await post(running, {"model": "up", "messages": QUESTION})
    assert headers["x-tollway-cache"] == "HIT"
    now[0] += 100
    _, headers, _ = await post(running, {"model": "up", "messages": QUESTION})
    assert headers["x-tollway-cache"] == "MISS"  # the configured ttl of 100 s passed


async def test_lru_bound(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url, max_entries=2, semantic=False))
    questions = [[{"role": "user", "content": f"Question number {i}"}] for i in range(3)]
    for q in questions[:2]:
        await post(running, {"model": "up", "messages": q})
    await post(running, {"model": "up", "messages": questions[0]})  # a hit: 0 becomes the most recent
    await post(running, {"model": "up", "messages": questions[2]})  # evicts 1, the least recently used
    assert len(cache_plugin(running).store) == 2
    # (1 last: its miss stores it again and evicts another)
    hits = [(await post(running, {"model": "up", "messages": questions[i]}))[1]["x-tollway-cache"] for i in (0, 2, 1)]
    assert hits == ["HIT", "HIT", "MISS"]


# -- eligibility ------------------------------------------------------------------------

async def test_high_temperature_and_several_choices_bypass(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url, max_temperature=0.7))
    for body in ({"temperature": 1.2}, {}, {"n": 2, "temperature": 0}):
        for _ in range(2):
            _, headers, _ = await post(running, {"model": "up", "messages": QUESTION, **body})
            assert headers["x-tollway-cache"] == "BYPASS", body
    assert len(cache_plugin(running).store) == 0


async def test_errors_and_cut_streams_are_not_stored(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url))
    status, _, _ = await post(running, {"model": "up", "messages": QUESTION, "mock": {"status": 500}})
    assert status == 502
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        with pytest.raises(openai.APIError):
            stream = await client.chat.completions.create(model="up", messages=QUESTION, stream=True,
                                                          extra_body={"mock": {"drop_after": 3}})
            async for _ in stream:
                pass
    assert len(cache_plugin(running).store) == 0


# -- streams ----------------------------------------------------------------------------

async def test_hit_replayed_as_a_stream_to_the_openai_sdk(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url))
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        first = await client.chat.completions.create(model="up", messages=QUESTION)
        raw = await client.chat.completions.with_raw_response.create(
            model="up", messages=QUESTION, stream=True, stream_options={"include_usage": True})
        assert raw.headers["x-tollway-cache"] == "HIT"
        chunks = [c async for c in raw.parse()]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    assert (await upstream_stats(mock_upstream))["requests"] == 1


async def test_streamed_miss_is_stored_once_complete(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url))
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        stream = await client.chat.completions.create(model="up", messages=QUESTION, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        raw = await client.chat.completions.with_raw_response.create(model="up", messages=QUESTION)
    assert raw.headers["x-tollway-cache"] == "HIT"
    assert raw.parse().choices[0].message.content == text
    assert (await upstream_stats(mock_upstream))["requests"] == 1


async def test_tool_calls_replay_in_a_stream(start_gateway, mock_upstream):
    from plugins.cache import CallState
    from plugins.cache.controls import Controls
    from plugins.cache.keys import request_forms

    running = await start_gateway(cache_config(mock_upstream.url, semantic=False), plugins=[KeyAuth()])
    body = {"model": "up", "messages": QUESTION}
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Paris"}'}}]}
    completion = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "upstream-model",
                  "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    await cache_plugin(running).put(CallState("key:key-k", request_forms(body, "up"), Controls()), completion,
                                    {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        stream = await client.chat.completions.create(model="up", messages=QUESTION, stream=True)
        chunks = [c async for c in stream]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "call_1" and calls[0].function.name == "lookup"
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert (await upstream_stats(mock_upstream))["requests"] == 0


# -- tenants and billing -----------------------------------------------------------------

async def test_tenants_never_share_entries_by_default(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url), plugins=[KeyAuth()])
    await post(running, {"model": "up", "messages": QUESTION}, key="alice")
    _, headers, _ = await post(running, {"model": "up", "messages": QUESTION}, key="bob")
    assert headers["x-tollway-cache"] == "MISS"
    _, headers, _ = await post(running, {"model": "up", "messages": QUESTION}, key="alice")
    assert headers["x-tollway-cache"] == "HIT"


async def test_account_and_global_scopes_share_as_configured(start_gateway, mock_upstream):
    auth = KeyAuth({"a1": "acme", "a2": "acme", "b1": "globex"})
    running = await start_gateway(cache_config(mock_upstream.url, scope="account"), plugins=[auth])
    await post(running, {"model": "up", "messages": QUESTION}, key="a1")
    assert (await post(running, {"model": "up", "messages": QUESTION}, key="a2"))[1]["x-tollway-cache"] == "HIT"
    assert (await post(running, {"model": "up", "messages": QUESTION}, key="b1"))[1]["x-tollway-cache"] == "MISS"


async def test_global_scope(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url, scope="global"), plugins=[KeyAuth()])
    await post(running, {"model": "up", "messages": QUESTION}, key="alice")
    assert (await post(running, {"model": "up", "messages": QUESTION}, key="bob"))[1]["x-tollway-cache"] == "HIT"


async def test_hits_are_priced_and_counted_as_configured(start_gateway, mock_upstream):
    probe = Probe()
    running = await start_gateway(cache_config(mock_upstream.url, hit_price=0.25, hits_count_for_limits=False),
                                  plugins=[probe])
    await post(running, {"model": "up", "messages": QUESTION})
    await post(running, {"model": "up", "messages": QUESTION})
    (miss_status, miss_mult, miss_counts, _), (hit_status, hit_mult, hit_counts, hit_usage) = probe.seen
    assert (miss_status, miss_mult, miss_counts) == ("MISS", 1.0, True)
    assert (hit_status, hit_mult, hit_counts) == ("HIT", 0.25, False)
    assert hit_usage is not None and hit_usage.completion_tokens > 0


async def test_hits_are_free_by_default(start_gateway, mock_upstream):
    probe = Probe()
    running = await start_gateway(cache_config(mock_upstream.url), plugins=[probe])
    await post(running, {"model": "up", "messages": QUESTION})
    await post(running, {"model": "up", "messages": QUESTION})
    assert probe.seen[1][:3] == ("HIT", 0.0, True)


# -- persistence ---------------------------------------------------------------------------

async def test_persistence_survives_a_restart(start_gateway, mock_upstream):
    config = cache_config(mock_upstream.url, persist=True)
    first = await start_gateway(config)
    await post(first, {"model": "up", "messages": QUESTION})
    await first.server.close()  # shutdown flushes the write-behind queue
    second = await start_gateway(config)
    _, headers, _ = await post(second, {"model": "up", "messages": QUESTION})
    assert headers["x-tollway-cache"] == "HIT"
    assert (await upstream_stats(mock_upstream))["requests"] == 1


async def test_anthropic_clients_bypass_with_controls_stripped(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url))
    body = {"model": "up", "max_tokens": 50, "messages": [{"role": "user", "content": "Hello?"}],
            "cache": {"no_store": True}}
    for _ in range(2):
        async with aiohttp.ClientSession() as s, s.post(f"{running.root}/v1/messages", json=body,
                                                        headers={"x-api-key": "k",
                                                                 "anthropic-version": "2023-06-01"}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["x-tollway-cache"] == "BYPASS"
    stats = await upstream_stats(mock_upstream)
    assert stats["requests"] == 2 and "cache" not in stats["last_body"]
