"""A structured-output request whose shape a translating provider cannot read, through the real
server: 400 naming the field, before any upstream is called, whatever provider serves the model.
Before: ``response_format.json_schema`` not an object answered 500 (a traceback: AttributeError in
the Anthropic and Gemini translations); ``json_schema.schema`` not an object became an Anthropic
tool's input_schema, refused upstream with a message about ``tools.0.input_schema`` the client never
sent; ``response_format: 5`` was dropped silently by both translations (200, no JSON asked); and
the Responses API's ``text.format.schema`` went the same way."""

from __future__ import annotations

import aiohttp
import pytest
from business import DEMO, add_claude, bearer, biz_config, credits


@pytest.fixture
async def running(start_gateway, mock_upstream):
    root = mock_upstream.url.removesuffix("/v1")
    config = add_claude(biz_config(mock_upstream.url), root, model="text")
    config["providers"]["gem"] = {"kind": "gemini", "base_url": root, "api_key": "g"}
    config["models"]["gem"] = {"provider": "gem", "model": "text", "price": {"input": 1.0, "output": 2.0}}
    return await start_gateway(config)


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("model", ["claude", "gem", "up"])
@pytest.mark.parametrize(("fmt", "param"), [
    (5, "response_format"),
    ("json_object", "response_format"),
    ({"type": "json_schema", "json_schema": 5}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}, "response_format.json_schema.schema"),
])
async def test_a_response_format_no_provider_can_read_is_a_400(running, mock_upstream, model, fmt, param, caplog):
    async with aiohttp.ClientSession() as s:
        before = await credits(s, running, DEMO)
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                          json={"model": model, "messages": MESSAGES, "response_format": fmt}) as r:
            answer = await r.json()
        assert (r.status, answer["error"]["param"]) == (400, param), answer
        assert await credits(s, running, DEMO) == before
        # a schema that is an object is served, as before
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO), json={
                "model": model, "messages": MESSAGES,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                    "type": "object", "properties": {"a": {"type": "string"}}}}}}) as r:
            assert r.status == 200, await r.text()
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("model", ["claude", "up"])
@pytest.mark.parametrize(("text", "param"), [
    (5, "text"),
    ({"format": 5}, "text"),
    ({"format": {"type": "json_schema", "name": "x", "schema": 5}}, "text.format.schema"),
])
async def test_a_responses_text_format_no_provider_can_read_is_a_400(running, model, text, param):
    async with aiohttp.ClientSession() as s, s.post(running.url + "/responses", headers=bearer(DEMO),
                                                    json={"model": model, "input": "hi", "text": text}) as r:
        answer = await r.json()
    assert (r.status, answer["error"]["param"]) == (400, param), answer
