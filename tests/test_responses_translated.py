"""The Responses API to upstreams that do not serve it (Anthropic, Gemini, a
chat-only OpenAI-compatible server, the built-in mock): translated through the
canonical form both ways, read by the official openai SDK (``responses.create``
and ``responses.stream``), text, tool calls, status and usage equal to the
fixture's; memory-bound fields refused with a 400; money in the ledger."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest
from _translation import OPENAI_TOOLS, UPSTREAMS, config, expected
from business import DEMO, add_claude, bearer, biz_config, credits
from test_output_never_free import cut_anthropic, ledger

from benchmarks.mock_fixtures import LAST_KEY
from benchmarks.mock_fixtures import make_app as make_fixture_app
from plugins.accounts.tokens import count_tokens

TOOLS = [{"type": "function", **t["function"]} for t in OPENAI_TOOLS]


@pytest.fixture(params=[None, 7], ids=["whole", "split7"])
async def env(request, aiohttp_server, start_gateway):
    mock = await aiohttp_server(make_fixture_app(split=request.param))
    cfg = config(str(mock.make_url("")).rstrip("/"))
    cfg["providers"]["openai"]["responses_api"] = False  # a server that knows only Chat Completions
    running = await start_gateway(cfg)
    async with openai.AsyncOpenAI(base_url=running.url, api_key="sk-client", max_retries=0) as client:
        yield running, mock, client


def assembled(r) -> tuple:
    calls = [(item.name, json.loads(item.arguments)) for item in r.output if item.type == "function_call"]
    u = r.usage
    usage = (u.input_tokens, u.output_tokens, u.input_tokens_details.cached_tokens,
             u.output_tokens_details.reasoning_tokens)
    return r.output_text, calls, r.status, usage


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("scenario", ["text", "tools", "length"])
async def test_responses_through_every_provider_kind(env, upstream, scenario, stream):
    running, mock, client = env
    args = {"model": f"{upstream}-{scenario}", "instructions": "Be brief.", "input": "Hi there",
            "max_output_tokens": 2000, "tools": TOOLS}
    if stream:
        async with client.responses.stream(**args) as s:
            events = [event async for event in s]
        kinds = [event.type for event in events]
        r = events[-1].response  # (the SDK's get_final_response() knows only response.completed)
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds[-1] == ("response.incomplete" if scenario == "length" else "response.completed")
        if scenario == "tools":
            assert "response.function_call_arguments.delta" in kinds
    else:
        r = await client.responses.create(**args)
    want = expected(scenario, upstream)
    text, calls, status, usage = assembled(r)
    assert (text, calls, usage) == (want.text, want.calls, want.usage)
    assert status == ("incomplete" if scenario == "length" else "completed")
    assert r.id.startswith("resp_") and r.object == "response"


async def test_the_upstream_gets_the_translated_request(env):
    running, mock, client = env
    await client.responses.create(
        model="anthropic-text", instructions="Be brief.", max_output_tokens=300, tools=TOOLS,
        tool_choice={"type": "function", "name": "get_time"}, temperature=0.5,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                                            {"type": "input_image", "image_url": "https://example.com/a.png"}]},
               {"type": "function_call", "call_id": "toolu_1", "name": "get_weather", "arguments": '{"location":"P"}'},
               {"type": "function_call_output", "call_id": "toolu_1", "output": "18C"},
               {"role": "user", "content": "And tomorrow?"}])
    body = mock.app[LAST_KEY]["anthropic"]["body"]
    assert body["system"] == [{"type": "text", "text": "Be brief."}] or body["system"] == "Be brief."
    assert body["max_tokens"] == 300 and body["temperature"] == 0.5
    assert body["tool_choice"]["type"] == "tool" and body["tool_choice"]["name"] == "get_time"
    assert [t["name"] for t in body["tools"]] == ["get_weather", "get_time", "list_alerts"]
    first, assistant, results = body["messages"]
    assert [b["type"] for b in first["content"]] == ["text", "image"]
    assert assistant["content"][0] == {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                       "input": {"location": "P"}}
    assert results["content"][0]["type"] == "tool_result" and results["content"][0]["tool_use_id"] == "toolu_1"


@pytest.mark.parametrize(("extra", "param"), [
    ({"conversation": "conv_1"}, "conversation"),
    ({"store": True}, "store"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"type": "file_search_call", "id": "x"}]}, "input[0].type"),
])
@pytest.mark.parametrize("upstream", ["anthropic", "gemini", "openai"])
async def test_what_needs_openais_responses_api_is_a_clear_400_elsewhere(env, extra, param, upstream):
    running, mock, client = env
    with pytest.raises(openai.BadRequestError) as exc:
        await client.responses.create(**{"model": f"{upstream}-text", "input": "Hi", **extra})
    assert exc.value.body["param"] == param and exc.value.body["code"] == "unsupported_parameter"
    assert f"provider '{upstream}'" in exc.value.message or "hosted" in exc.value.message \
        or "Responses API" in exc.value.message


async def test_the_built_in_mock_answers_the_responses_api(start_gateway):
    running = await start_gateway(biz_config())
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        r = await client.responses.create(model="echo", input="hello mock")
        async with client.responses.stream(model="echo", input="hello mock") as s:
            streamed = await s.get_final_response()
        async with aiohttp.ClientSession() as http:
            got = await credits(http, running, DEMO)
    assert r.output_text == streamed.output_text == "hello mock"
    told = [round(x.usage.model_extra["cost"] * 1e6) for x in (r, streamed)]
    rows = await ledger(running)
    assert [row["cost"] for row in rows] == told and told[0] > 0
    assert got["spent_micro_usd"] == sum(told) and got["reserved_micro_usd"] == 0


async def test_a_translated_stream_cut_midway_bills_what_went_out(start_gateway, serve_upstream):
    upstream = await serve_upstream({"POST /v1/messages": cut_anthropic})
    running = await start_gateway(add_claude(biz_config(), upstream.root))
    async with aiohttp.ClientSession() as http:
        async with http.post(running.url + "/responses", headers=bearer(DEMO),
                             json={"model": "claude", "input": "go", "stream": True, "max_output_tokens": 1000}) as r:
            assert r.status == 200
            text = await r.text()
        got = await credits(http, running, DEMO)
    assert "event: error" in text and "response.completed" not in text
    deltas = "".join(json.loads(line[6:])["delta"] for line in text.splitlines()
                     if line.startswith("data: ") and '"response.output_text.delta"' in line)
    assert deltas.startswith("word0 and more ") and "word39" in deltas
    [row] = await ledger(running)
    assert row["estimated"] == 1 and row["prompt"] == 25 and row["completion"] == await count_tokens(deltas)
    assert row["cost"] == 25 * 3 + row["completion"] * 15 == got["spent_micro_usd"]
