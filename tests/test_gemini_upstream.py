"""OpenAI clients against a Gemini upstream: the request as Gemini receives it
(key in a header, alt=sse, roles, parts, cleaned schemas, tool results by
name, thought signatures kept), error mapping, mid-stream errors, embeddings."""

from __future__ import annotations

import base64
import struct

import openai
import orjson
import pytest
from _translation import OPENAI_TOOLS, config, post_raw

from benchmarks.mock_fixtures import LAST_KEY
from benchmarks.mock_fixtures import make_app as make_fixture_app
from plugins.providers.gemini_request import to_gemini
from plugins.providers.gemini_response import GeminiStreamDecoder
from plugins.providers.gemini_schema import clean_schema


@pytest.fixture
async def env(aiohttp_server, start_gateway):
    mock = await aiohttp_server(make_fixture_app())
    cfg = config(str(mock.make_url("")).rstrip("/"))
    cfg["models"]["gemini-embed"] = {"provider": "gemini", "model": "text-embedding-004",
                                     "price": {"input": 0.1, "output": 0}}
    running = await start_gateway(cfg)
    client = openai.AsyncOpenAI(base_url=running.url, api_key="sk-client", max_retries=0)
    yield running, mock, client
    await client.close()


def last(mock) -> dict:
    return mock.app[LAST_KEY]["gemini"]


async def test_request_as_gemini_receives_it(env):
    running, mock, client = env
    s = await client.chat.completions.create(
        model="gemini-text", stream=True, tools=OPENAI_TOOLS, tool_choice={"type": "function",
                                                                            "function": {"name": "get_time"}},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Metric."},
                  {"role": "user", "content": [{"type": "text", "text": "Look"},
                                               {"type": "image_url",
                                                "image_url": {"url": "data:image/png;base64,AA=="}},
                                               {"type": "image_url",
                                                "image_url": {"url": "https://example.com/cat.png"}}]},
                  {"role": "user", "content": "and answer"}],
        temperature=1.4, top_p=0.5, max_tokens=300, stop=["END"], seed=7, presence_penalty=0.5,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {
            "type": "object", "additionalProperties": False, "properties": {"n": {"type": "integer",
                                                                                  "title": "N"}}}}})
    async for _ in s:
        pass
    got = last(mock)
    assert got["path"] == "/v1beta/models/text:streamGenerateContent"
    assert got["query"] == {"alt": "sse"}  # and no key in the URL
    assert got["headers"]["x-goog-api-key"] == "g-upstream-secret"
    body = got["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Metric."}]}
    assert body["contents"] == [{"role": "user", "parts": [
        {"text": "Look"}, {"inlineData": {"mimeType": "image/png", "data": "AA=="}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}},
        {"text": "and answer"}]}]
    assert body["generationConfig"] == {
        "temperature": 1.4, "topP": 0.5, "seed": 7, "presencePenalty": 0.5, "maxOutputTokens": 300,
        "stopSequences": ["END"], "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}}
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}}
    decls = body["tools"][0]["functionDeclarations"]
    assert decls[0]["parameters"] == {
        "type": "object", "required": ["location"],
        "properties": {"location": {"type": "string"},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                       "days": {"type": "integer", "nullable": True},
                       "tags": {"type": "array", "items": {"type": "string"}}}}
    assert decls[1]["parameters"] == {"type": "object", "properties": {"timezone": {"type": "string"}}}
    assert "parameters" not in decls[2]  # no arguments: Gemini refuses an empty OBJECT


async def test_tool_round_trip_by_name_with_thought_signature(env):
    running, mock, client = env
    r = await client.chat.completions.create(model="gemini-tools", tools=OPENAI_TOOLS,
                                             messages=[{"role": "user", "content": "weather, time, alerts"}])
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in message.tool_calls] == ["get_weather", "get_time", "list_alerts"]
    history = [{"role": "user", "content": "weather, time, alerts"}, message.model_dump(exclude_none=True)]
    history += [{"role": "tool", "tool_call_id": c.id, "content": content}
                for c, content in zip(message.tool_calls, ['{"temp": 18}', "09:00", "none"], strict=True)]
    await client.chat.completions.create(model="gemini-text", tools=OPENAI_TOOLS, messages=history)
    contents = last(mock)["body"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    calls = contents[1]["parts"][1:]
    assert calls[0]["thoughtSignature"] == "c2lnbmF0dXJlLTE="  # given back as Gemini signed it
    assert "thoughtSignature" not in calls[1]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
        {"functionResponse": {"name": "get_time", "response": {"content": "09:00"}}},
        {"functionResponse": {"name": "list_alerts", "response": {"content": "none"}}}]


async def test_tool_result_for_unknown_call_is_refused(env):
    running, mock, client = env
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="gemini-text", messages=[
            {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_nope", "content": "1"}])
    assert exc.value.body["param"] == "messages[1].tool_call_id"


@pytest.mark.parametrize("kw, param", [({"n": 3}, "n"), ({"logprobs": True}, "logprobs"),
                                       ({"modalities": ["text", "audio"]}, "modalities")])
async def test_unsupported_parameters_are_refused(env, kw, param):
    running, mock, client = env
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="gemini-text", messages=[{"role": "user", "content": "x"}], **kw)
    assert exc.value.body["param"] == param and "Gemini" in exc.value.body["message"]


@pytest.mark.parametrize("fixture, status, code", [
    ("rate_limited", 429, "upstream_rate_limited"),
    ("overloaded", 503, "upstream_overloaded"),
    ("invalid", 400, "upstream_invalid_request"),
    ("auth", 502, "upstream_auth_failed"),  # Gemini says 400 API_KEY_INVALID
    ("server_error", 502, "upstream_error"),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_errors_map(env, fixture, status, code, stream):
    running, mock, client = env
    got, headers, raw = await post_raw(running.url + "/chat/completions", {
        "model": f"gemini-{fixture}", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    body = orjson.loads(raw)
    assert (got, body["error"]["code"]) == (status, code)
    if status == 429:
        assert headers["Retry-After"] == "17"  # from RetryInfo.retryDelay
    if fixture == "invalid":
        assert "max_output_tokens must be positive" in body["error"]["message"]
    if fixture == "auth":
        assert "API key" not in body["error"]["message"] and "secret" not in body["error"]["message"]


async def test_midstream_error_ends_stream_in_band(env):
    running, mock, client = env
    status, _, raw = await post_raw(running.url + "/chat/completions", {
        "model": "gemini-midstream_error", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}]})
    events = [e for e in raw.split(b"\n\n") if e]
    assert status == 200 and events[-1] == b"data: [DONE]"
    assert b"Partial answ" in raw
    assert orjson.loads(events[-2][6:])["error"]["code"] == "upstream_overloaded"


async def test_embeddings(env):
    running, mock, client = env
    one = await client.embeddings.create(model="gemini-embed", input="hello world", dimensions=4)
    assert last(mock)["path"] == "/v1beta/models/text-embedding-004:embedContent"
    assert last(mock)["body"] == {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello world"}]},
                                  "outputDimensionality": 4}
    assert len(one.data) == 1 and len(one.data[0].embedding) == 4
    assert one.usage.prompt_tokens == 3  # estimated: Gemini reported no count
    many = await client.embeddings.create(model="gemini-embed", input=["a", "hello world"])
    assert last(mock)["path"] == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert [d.index for d in many.data] == [0, 1]
    assert len(many.data[1].embedding) == 8  # the mock's default size
    assert many.usage.prompt_tokens == 1 + 3
    status, _, raw = await post_raw(running.url + "/embeddings", {"model": "gemini-embed", "input": "hello world",
                                                                  "dimensions": 4, "encoding_format": "base64"})
    vector = struct.unpack("<4f", base64.b64decode(orjson.loads(raw)["data"][0]["embedding"]))
    assert vector == pytest.approx(one.data[0].embedding, rel=1e-6)
    status, _, raw = await post_raw(running.url + "/embeddings", {"model": "gemini-embed", "input": [[1, 2, 3]]})
    assert status == 400 and orjson.loads(raw)["error"]["param"] == "input"


# -- in-process -----------------------------------------------------------------------

def test_schema_cleaning_keeps_property_names_and_inlines_refs():
    schema = {"type": "object", "$defs": {"Item": {"type": "object", "title": "Item",
                                                   "properties": {"title": {"type": "string"}}}},
              "properties": {"title": {"type": "string", "default": "x"},
                             "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
                             "kind": {"const": "a"}, "level": {"type": "integer", "enum": [1, 2]},
                             "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
              "required": ["title", "ghost"]}
    assert clean_schema(schema) == {
        "type": "object",
        "properties": {"title": {"type": "string"},
                       "items": {"type": "array", "items": {"type": "object",
                                                            "properties": {"title": {"type": "string"}}}},
                       "kind": {"enum": ["a"]},
                       "level": {"type": "integer", "description": "allowed values: 1, 2"},
                       "maybe": {"nullable": True, "type": "string"}},
        "required": ["title"]}


def test_call_in_one_chunk_and_stop_in_another_answers_tool_calls():
    def ev(obj: dict) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"
    call = {"functionCall": {"name": "f", "args": {}}}
    stream = (ev({"candidates": [{"content": {"role": "model", "parts": [call]}}],
                  "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2}})
              + ev({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP"}]}))
    decoder = GeminiStreamDecoder("g", "m")
    chunks = decoder.feed(stream) + decoder.finish()
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert (decoder.usage.prompt_tokens, decoder.usage.completion_tokens) == (5, 2)  # last running total kept


def test_cut_stream_is_an_error():
    decoder = GeminiStreamDecoder("g", "m")
    decoder.feed(b'data: {"candidates":[{"content":{"parts":[{"text":"hi"}]}}]}\r\n\r\n')
    with pytest.raises(Exception) as exc:
        decoder.finish()
    assert getattr(exc.value, "code", None) == "upstream_stream_cut"


def test_reasoning_effort_maps_to_thinking_config():
    body = to_gemini({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high"})
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 16384, "includeThoughts": True}
    body = to_gemini({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "none"})
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0, "includeThoughts": False}
