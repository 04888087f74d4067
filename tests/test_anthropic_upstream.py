"""OpenAI clients against an Anthropic upstream: the request as Anthropic
receives it, refused parameters, error mapping, mid-stream errors, JSON mode."""

from __future__ import annotations

import openai
import orjson
import pytest
from _translation import OPENAI_TOOLS, config, post_raw

from benchmarks.mock_fixtures import LAST_KEY
from benchmarks.mock_fixtures import make_app as make_fixture_app
from plugins.providers.anthropic_request import JSON_TOOL, to_anthropic
from plugins.providers.anthropic_response import AnthropicStreamDecoder, message_to_completion

PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
async def env(aiohttp_server, start_gateway):
    mock = await aiohttp_server(make_fixture_app())
    running = await start_gateway(config(str(mock.make_url("")).rstrip("/")))
    client = openai.AsyncOpenAI(base_url=running.url, api_key="sk-client", max_retries=0)
    yield running, mock, client
    await client.close()


def last(mock) -> dict:
    return mock.app[LAST_KEY]["anthropic"]


async def test_request_as_anthropic_receives_it(env):
    running, mock, client = env
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather and time?"},
                                     {"type": "image_url", "image_url": {"url": PNG}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather",
                                                               "arguments": '{"location": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "list_alerts", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": ""},
        {"role": "user", "content": "Thanks. And tomorrow?"},
        {"role": "user", "content": ""},
    ]
    await client.chat.completions.create(
        model="anthropic-text", messages=messages, tools=OPENAI_TOOLS, tool_choice="required",
        parallel_tool_calls=False, stop="END", temperature=0.5, top_p=0.9, user="user-42")
    got = last(mock)
    assert got["headers"]["x-api-key"] == "sk-ant-upstream-secret"
    assert got["headers"]["anthropic-version"] == "2023-06-01"
    body = got["body"]
    assert body["model"] == "text"
    assert body["max_tokens"] == 1000  # the provider's default_max_tokens
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    user = body["messages"][0]["content"]
    assert user[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                   "data": "iVBORw0KGgo="}}
    assert user[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "list_alerts", "input": {}}]
    # Both results in ONE user message, first, then the user's text; the empty message is gone.
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "toolu_2"},
        {"type": "text", "text": "Thanks. And tomorrow?"}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["tools"][0]["name"] == "get_weather" and "input_schema" in body["tools"][0]
    assert body["stop_sequences"] == ["END"]
    assert (body["temperature"], body["top_p"], body["metadata"]) == (0.5, 0.9, {"user_id": "user-42"})


async def test_max_completion_tokens_and_stream_flag(env):
    running, mock, client = env
    s = await client.chat.completions.create(model="anthropic-text", messages=[{"role": "user", "content": "x"}],
                                             max_completion_tokens=77, stream=True)
    async for _ in s:
        pass
    body = last(mock)["body"]
    assert body["max_tokens"] == 77 and body["stream"] is True
    assert "stream_options" not in body


@pytest.mark.parametrize("kw, param", [
    ({"temperature": 1.5}, "temperature"),
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"response_format": {"type": "json_object"}, "tools": OPENAI_TOOLS}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                 "input_audio": {"data": "AA==", "format": "wav"}}]}]},
     "messages[0].content[0].type"),
])
async def test_unsupported_parameters_are_refused(env, kw, param):
    running, mock, client = env
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="anthropic-text", **kw)
    err = exc.value.body
    assert err["param"] == param and err["code"] == "unsupported_parameter"
    assert param.split("[")[0] in err["message"] and "Anthropic" in err["message"]


async def test_clamp_temperature_option(aiohttp_server, start_gateway):
    mock = await aiohttp_server(make_fixture_app())
    cfg = config(str(mock.make_url("")).rstrip("/"))
    cfg["providers"]["anthropic"]["clamp_temperature"] = True
    cfg["providers"]["anthropic"]["anthropic_version"] = "2099-01-01"
    running = await start_gateway(cfg)
    async with openai.AsyncOpenAI(base_url=running.url, api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="anthropic-text", messages=[{"role": "user", "content": "x"}],
                                             temperature=1.7)
    assert mock.app[LAST_KEY]["anthropic"]["body"]["temperature"] == 1
    assert mock.app[LAST_KEY]["anthropic"]["headers"]["anthropic-version"] == "2099-01-01"


ERROR_FIXTURES = [
    ("rate_limited", 429, "upstream_rate_limited"),
    ("overloaded", 503, "upstream_overloaded"),
    ("midstream_error", 503, "upstream_overloaded"),  # its non-stream answer is a 529
    ("invalid", 400, "upstream_invalid_request"),
    ("auth", 502, "upstream_auth_failed"),
    ("server_error", 502, "upstream_error"),
]


# A stream of `midstream_error` fails after the 200: test_midstream_error covers it.
@pytest.mark.parametrize("fixture, status, code, stream", [
    (*case, stream) for case in ERROR_FIXTURES for stream in (False, True)
    if not (case[0] == "midstream_error" and stream)])
async def test_errors_map(env, fixture, status, code, stream):
    running, mock, client = env
    got, headers, raw = await post_raw(running.url + "/chat/completions", {
        "model": f"anthropic-{fixture}", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    assert got == status
    body = orjson.loads(raw)
    assert body["error"]["code"] == code
    if status == 429:
        assert headers["Retry-After"] == "12"
    if fixture == "invalid":
        assert "max_tokens: 100000 > 64000" in body["error"]["message"]
    if fixture == "auth":
        assert "x-api-key" not in body["error"]["message"] and "secret" not in body["error"]["message"]


async def test_midstream_error_ends_openai_stream_in_band(env):
    running, mock, client = env
    status, _, raw = await post_raw(running.url + "/chat/completions", {
        "model": "anthropic-midstream_error", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2][len(b"data: "):])
    assert error["error"]["type"] == "service_unavailable" and "overloaded" in error["error"]["message"]
    assert b"Partial answ" in raw
    # The SDK sees the error too.
    s = await client.chat.completions.create(model="anthropic-midstream_error", stream=True,
                                             messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIError):
        async for _ in s:
            pass


# -- JSON output through the forced tool (in-process: the fixtures answer text) ------

def test_json_schema_becomes_forced_tool():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {
            "n": {"type": "integer"}}}}}}
    t = to_anthropic(body, "claude", default_max_tokens=100, clamp_temperature=False)
    assert t.json_tool == JSON_TOOL
    assert t.body["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    assert t.body["tools"][0]["input_schema"]["properties"] == {"n": {"type": "integer"}}


def test_json_tool_answer_is_message_text():
    msg = {"id": "msg_1", "model": "claude", "stop_reason": "tool_use",
           "content": [{"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {"n": 4}}],
           "usage": {"input_tokens": 3, "output_tokens": 5}}
    completion = message_to_completion(msg, JSON_TOOL)
    choice = completion["choices"][0]
    assert orjson.loads(choice["message"]["content"]) == {"n": 4}
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]

    def ev(name, **data):
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"
    stream = (ev("message_start", message={"id": "msg_1", "model": "claude", "usage": {"input_tokens": 3}})
              + ev("content_block_start", index=0, content_block={"type": "tool_use", "id": "t", "name": JSON_TOOL,
                                                                   "input": {}})
              + ev("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": '{"n"'})
              + ev("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": ": 4}"})
              + ev("content_block_stop", index=0)
              + ev("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 5})
              + ev("message_stop"))
    decoder = AnthropicStreamDecoder("up", JSON_TOOL)
    chunks = decoder.feed(stream) + decoder.finish()
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert orjson.loads(text) == {"n": 4}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)
    assert (decoder.usage.prompt_tokens, decoder.usage.completion_tokens) == (3, 5)


def test_reasoning_effort_maps_to_thinking_budget():
    body = {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "medium", "max_tokens": 10000}
    t = to_anthropic(body, "claude", default_max_tokens=100, clamp_temperature=False)
    assert t.body["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert t.body["max_tokens"] == 10000
    # No client max: the default bounds the answer, the budget comes on top.
    del body["max_tokens"]
    t = to_anthropic(body, "claude", default_max_tokens=100, clamp_temperature=False)
    assert t.body["max_tokens"] == 4196
