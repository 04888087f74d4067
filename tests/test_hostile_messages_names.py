"""Errors of a translated Messages API request name the Messages fields the client sent,
through the real server with the official anthropic SDK. A request to a Gemini-served model is
translated to chat form, and what refuses it then named chat fields. Before:
``tools[1].function.parameters.properties`` (sent: ``tools.1.input_schema.properties``),
``messages[3].tool_call_id`` (``messages.2.content.0.tool_use_id``; the system prompt shifted
the index), ``messages[1].content[1].image_url.url`` (``messages.0.content.1.source``)."""

from __future__ import annotations

import anthropic
import pytest
from business import DEMO, biz_config


@pytest.fixture
async def client(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url)
    config["providers"]["gem"] = {"kind": "gemini", "base_url": mock_upstream.url.removesuffix("/v1"), "api_key": "g"}
    config["models"]["gem"] = {"provider": "gem", "model": "text", "price": {"input": 1.0, "output": 2.0}}
    running = await start_gateway(config)
    sdk = anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0)
    yield sdk
    await sdk.close()


CALL = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
CASES = [
    ({"tools": [{"name": "ok", "input_schema": {"type": "object"}},
                {"name": "f", "input_schema": {"type": "object", "properties": {"a": {"anyOf": [{"type": 5}]}}}}],
      "messages": [{"role": "user", "content": "hi"}]}, "tools.1.input_schema.properties.a.anyOf.0.type"),
    ({"system": "be brief", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [CALL]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "ok"}]}]},
     "messages.2.content.0.tool_use_id"),
    ({"system": "be brief", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image", "source": {"type": "url", "url": "ftp://x/y.png"}}]}]},
     "messages.0.content.1.source"),
]


@pytest.mark.parametrize(("body", "path"), CASES, ids=["tool-schema", "tool-result", "image"])
async def test_a_translation_refusal_names_the_messages_field(client, body, path):
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(model="gem", max_tokens=50, **body)
    error = refused.value.body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"'{path}' "), error
    assert "[" not in error["message"].split("'")[1], error
