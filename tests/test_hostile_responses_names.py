"""Errors of a translated Responses API request name the Responses fields the client sent,
through the real server with the official openai SDK. A request to a model whose upstream does
not serve the Responses API (Anthropic, Gemini, the mock) is translated to chat form, and what
refuses it then (the provider's translation, a rate limit, the credit check) named chat fields.
Before: ``messages[2].content[1].image_url.url`` (sent: ``input[0].content[1].image_url``),
``messages[2].tool_calls[0].function.arguments`` (``input[1].arguments``),
``messages[1].tool_call_id`` (``input[1].call_id``), ``reasoning_effort`` with "raise
max_completion_tokens" (``reasoning.effort``, ``max_output_tokens``), ``logprobs``
(``top_logprobs``), ``tools[0].function.parameters...`` (``tools[0].parameters...``),
``response_format.json_schema.schema...`` (``text.format.schema...``), and ``max_tokens`` in a
limit's or the credit check's refusal."""

from __future__ import annotations

import openai
import pytest
from business import DEMO, add_claude, biz_config

LIMITED, POOR = "sk-limited-names-0001", "sk-poor-names-000001"
USER = {"role": "user", "content": "hi"}


@pytest.fixture
async def client(start_gateway, mock_upstream):
    root = mock_upstream.url.removesuffix("/v1")
    keys = [{"name": "demo", "key": DEMO, "credits": 5.0},
            {"name": "limited", "key": LIMITED, "credits": 5.0, "limits": {"tpm": 200}},
            {"name": "poor", "key": POOR, "credits": 0.0001}]
    config = add_claude(biz_config(mock_upstream.url, keys=keys), root, model="text")
    config["providers"]["gem"] = {"kind": "gemini", "base_url": root, "api_key": "g"}
    config["models"]["gem"] = {"provider": "gem", "model": "text", "price": {"input": 1.0, "output": 2.0}}
    running = await start_gateway(config)
    sdk = openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0)
    yield sdk
    await sdk.close()


CALL = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "not json"}
CASES = [
    ("claude", {"instructions": "be brief", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": "ftp://x/y.png"}]}]},
     "input[0].content[1].image_url", "messages"),
    ("claude", {"instructions": "be brief", "input": [USER, CALL,
                                                      {"type": "function_call_output", "call_id": "call_1",
                                                       "output": "ok"}]},
     "input[1].arguments", "messages"),
    ("gem", {"input": [USER, {"type": "function_call_output", "call_id": "nope", "output": "ok"}]},
     "input[1].call_id", "messages"),
    ("claude", {"input": "hi", "reasoning": {"effort": "low"}, "max_output_tokens": 500}, "reasoning.effort",
     "max_completion_tokens"),
    ("claude", {"input": "hi", "top_logprobs": 2}, "top_logprobs", "'logprobs'"),
    ("gem", {"input": "hi", "tools": [{"type": "function", "name": "f",
                                       "parameters": {"type": "object", "properties": 5}}]},
     "tools[0].parameters.properties", "function"),
    ("gem", {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": 5}}}}}}, "text.format.schema.properties.a.type",
     "response_format"),
]


@pytest.mark.parametrize(("model", "body", "param", "chat_word"), CASES,
                         ids=["image", "arguments", "call_id", "effort", "logprobs", "tool-schema", "text-format"])
async def test_a_translation_refusal_names_the_responses_field(client, model, body, param, chat_word):
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=model, **body)
    error = refused.value.body
    assert error["param"] == param, error
    assert f"'{param}'" in error["message"] and chat_word not in error["message"], error


async def test_the_same_refusal_on_chat_completions_keeps_the_chat_names(client):
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model="claude", messages=[USER], reasoning_effort="low",
                                             max_completion_tokens=500)
    assert refused.value.body["param"] == "reasoning_effort"
    assert "max_completion_tokens" in refused.value.body["message"]


async def test_limit_and_credit_refusals_name_max_output_tokens(client):
    limited = client.with_options(api_key=LIMITED)
    with pytest.raises(openai.APIStatusError) as refused:
        await limited.responses.create(model="echo", input="hi", max_output_tokens=5000)
    assert refused.value.status_code == 413
    error = refused.value.body
    assert error["param"] == "max_output_tokens" and "lower max_output_tokens" in error["message"], error
    poor = client.with_options(api_key=POOR)
    with pytest.raises(openai.APIStatusError) as refused:
        await poor.responses.create(model="claude", input="hi", max_output_tokens=100000)
    assert refused.value.status_code == 402
    assert "lower max_output_tokens" in refused.value.body["message"], refused.value.body
    assert "max_tokens" not in refused.value.body["message"]
