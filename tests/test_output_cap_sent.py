"""A metered request without an output cap is held for the model's cap (its
``max_output_tokens``, else ``plugins.quotas.default_max_tokens``): that cap goes
upstream too, in the field of the client's dialect, so a long answer stops where the
hold does. Before, the upstream wrote on (here 20,000 tokens against a hold of
4,096) and what passed the hold was given away under a budget or at a balance's
edge. An unmetered key without budgets is not capped (nothing it writes is free).
Through the real server with the openai SDK; told == ledger == spent."""

from __future__ import annotations

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from business import bearer, biz_config, credits, ledger_rows

LONG = 20_000  # tokens the upstream writes when nothing stops it
DEFAULT_CAP = 4096  # plugins.quotas.default_max_tokens
BUDGETED = "sk-test-cap-budget-001"  # $5 and a daily budget of $1
EDGE = "sk-test-cap-edge-0001"  # 2 cents: the hold fits, 20,000 tokens ($0.04) would not
FREE = "sk-test-cap-free-0001"  # unmetered, no budget
CAP_FIELDS = {"/chat/completions": ("max_completion_tokens", "max_tokens"), "/completions": ("max_tokens",),
              "/responses": ("max_output_tokens",)}


def long_upstream(seen: list[dict]):
    """An OpenAI-like upstream that writes ``LONG`` tokens unless the request's cap stops it sooner."""

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        path = request.path.removeprefix("/v1")
        caps = [body[f] for f in CAP_FIELDS[path] if isinstance(body.get(f), int)]
        n = min([LONG, *caps])
        finish = "length" if caps and n == caps[0] else "stop"
        if path == "/responses":
            usage = {"input_tokens": 10, "output_tokens": n, "total_tokens": 10 + n}
            return web.json_response({"id": "resp_long", "object": "response", "status": "completed", "model": "m",
                                      "usage": usage, "output": [{"type": "message", "role": "assistant", "content": [
                                          {"type": "output_text", "text": "w " * n}]}]})
        usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
        if path == "/completions":
            return web.json_response({"id": "c", "object": "text_completion", "created": 1, "model": "m",
                                      "usage": usage, "choices": [{"index": 0, "text": "w " * n, "logprobs": None,
                                                                   "finish_reason": finish}]})
        if not body.get("stream"):
            return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                      "usage": usage, "choices": [{"index": 0, "finish_reason": finish, "message": {
                                          "role": "assistant", "content": "w " * n}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        for chunk in ({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "w " * n}}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
                      {"choices": [], "usage": usage}):
            await resp.write(b"data: " + orjson.dumps({**head, **chunk}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return answer


@pytest.fixture
async def env(start_gateway, serve_upstream):
    seen: list[dict] = []
    handler = long_upstream(seen)
    upstream = await serve_upstream({f"POST /v1{path}": handler for path in CAP_FIELDS})
    config = biz_config(upstream.url, keys=[
        {"name": "budgeted", "key": BUDGETED, "credits": 5.0, "budgets": {"daily": 1.0}},
        {"name": "edge", "key": EDGE, "credits": 0.02}, {"name": "free", "key": FREE, "credits": None}])
    config["models"]["up"]["context_window"] = 128_000
    # The same upstream as an OpenAI-compatible server that knows only max_tokens, and a model with its own cap.
    config["providers"]["compat"] = {**config["providers"]["up"], "max_tokens_field": "max_tokens"}
    config["models"]["compat"] = {**config["models"]["up"], "provider": "compat"}
    config["models"]["short"] = {**config["models"]["up"], "max_output_tokens": 1000}
    return await start_gateway(config), seen


async def ask(running, key: str, path: str, model: str, stream: bool = False) -> int:
    """One request without an output cap through the SDK: what the client was told it cost (micro-USD)."""
    async with openai.AsyncOpenAI(base_url=running.url, api_key=key, max_retries=0) as client:
        if path == "/chat/completions":
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "write at length"}], stream=stream,
                **({"stream_options": {"include_usage": True}} if stream else {}))
        elif path == "/completions":
            raw = await client.completions.with_raw_response.create(model=model, prompt="write at length")
        else:
            raw = await client.responses.with_raw_response.create(model=model, input="write at length")
        answer = raw.parse()
        if stream:
            chunks = [c async for c in answer]
            assert chunks[-1].usage is not None
            return round(chunks[-1].usage.model_extra["cost"] * 1e6)
        return round(float(raw.headers["x-tollway-cost"]) * 1e6)


async def books(running, key: str, told: int) -> dict:
    """The request's ledger row, checked against what the client was told and what its key spent."""
    [row] = await ledger_rows(running, "completion", "prompt", "cost")
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, key)
    assert told == row["cost"] == got["spent_micro_usd"], (told, row, got)
    assert got["reserved_micro_usd"] == 0 and got["balance_micro_usd"] >= 0
    return row


@pytest.mark.parametrize("key", [BUDGETED, EDGE])
@pytest.mark.parametrize(("path", "model", "field", "stream"), [
    ("/chat/completions", "up", "max_completion_tokens", False),
    ("/chat/completions", "up", "max_completion_tokens", True),
    ("/chat/completions", "compat", "max_tokens", False),
    ("/completions", "up", "max_tokens", False),
    ("/responses", "up", "max_output_tokens", False),
])
async def test_a_held_request_without_a_cap_is_capped_upstream_where_its_hold_ends(env, key, path, model, field,
                                                                                   stream):
    running, seen = env
    told = await ask(running, key, path, model, stream)
    [sent] = seen
    assert sent[field] == DEFAULT_CAP
    assert [f for f in ("max_tokens", "max_completion_tokens", "max_output_tokens") if f in sent] == [field]
    row = await books(running, key, told)
    # Every token written is paid for, at $1 / $2 per 1M: none past the hold, none given away.
    assert row["completion"] == DEFAULT_CAP and told == row["prompt"] * 1 + DEFAULT_CAP * 2


async def test_the_models_own_output_cap_is_the_one_sent(env):
    running, seen = env
    told = await ask(running, BUDGETED, "/chat/completions", "short")
    assert seen[0]["max_completion_tokens"] == 1000
    row = await books(running, BUDGETED, told)
    assert row["completion"] == 1000 and told == 10 + 1000 * 2


async def test_a_cap_the_client_sent_is_left_as_it_is(env):
    running, seen = env
    async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", headers=bearer(BUDGETED),
                                                    json={"model": "up", "max_tokens": 50, "messages": [
                                                        {"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200
    assert seen[0]["max_tokens"] == 50 and "max_completion_tokens" not in seen[0]


async def test_an_unmetered_key_without_budgets_is_not_capped_and_pays_for_all_it_got(env):
    running, seen = env
    told = await ask(running, FREE, "/chat/completions", "up")
    assert "max_completion_tokens" not in seen[0] and "max_tokens" not in seen[0]
    row = await books(running, FREE, told)
    assert row["completion"] == LONG and told == 10 + LONG * 2
