"""A tool or output schema with a keyword Gemini reads holding a value of the wrong kind
(``properties: 5``, ``type: 5``, ``required: "a"``...), sent to a Gemini-served model through
the real server with the official SDK: a 400 naming the path in the schema, before the upstream
is called, nothing charged. Before: the value went up as it was; Gemini refuses such a schema
(the fixture mock answered 500 to ``properties: 5``, and the client got a 502 "upstream
'gemini' failed"), and ``enum: 5``, ``type: 5``, ``required: 5``... went up unchecked."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from business import DEMO, biz_config, credits


@pytest.fixture
async def running(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url)
    config["providers"]["gem"] = {"kind": "gemini", "base_url": mock_upstream.url.removesuffix("/v1"), "api_key": "g"}
    config["models"]["gem"] = {"provider": "gem", "model": "text", "price": {"input": 1.0, "output": 2.0}}
    return await start_gateway(config)


@pytest.fixture
async def client(running):
    sdk = openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0)
    yield sdk
    await sdk.close()


MESSAGES = [{"role": "user", "content": "hi"}]
BAD_SCHEMAS = [
    ({"type": "object", "properties": 5}, "properties", "must be an object of property schemas"),
    ({"type": "object", "properties": {"a": 5}}, "properties.a", "must be a JSON schema object"),
    ({"type": "object", "properties": {"a": {"type": "array", "items": "x"}}}, "properties.a.items",
     "must be a JSON schema object"),
    ({"type": "object", "properties": {"a": {"anyOf": {"type": "string"}}}}, "properties.a.anyOf",
     "must be a list of schemas"),
    ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, 7]}}}, "properties.a.anyOf[1]",
     "must be a JSON schema object"),
    ({"type": "object", "properties": {"a": {"type": "string", "enum": "x"}}}, "properties.a.enum",
     "must be a list"),
    ({"type": "object", "properties": {"a": {"type": 5}}}, "properties.a.type", "must be one of"),
    ({"type": "object", "properties": {"a": {"type": "text"}}}, "properties.a.type", "must be one of"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": "a"}, "required",
     "must be a list of property names"),
    ({"type": "object", "properties": {"a": {"type": "string", "description": {"x": 1}}}}, "properties.a.description",
     "must be a string"),
    ({"type": "object", "properties": {"a": {"type": "string", "maxLength": -1}}}, "properties.a.maxLength",
     "must be an integer of at least 0"),
]


@pytest.mark.parametrize(("schema", "path", "fragment"), BAD_SCHEMAS)
async def test_a_bad_tool_schema_is_a_400_naming_its_path(running, client, schema, path, fragment):
    async with aiohttp.ClientSession() as s:
        before = await credits(s, running, DEMO)
        tools = [{"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
                 {"type": "function", "function": {"name": "f", "parameters": schema}}]
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="gem", messages=MESSAGES, tools=tools, stream=stream)
            error = refused.value.body
            assert error["param"] == f"tools[1].function.parameters.{path}", error
            assert error["message"].startswith(f"'tools[1].function.parameters.{path}' {fragment}"), error
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="gem", messages=MESSAGES, response_format=fmt)
        assert refused.value.body["param"] == f"response_format.json_schema.schema.{path}"
        assert await credits(s, running, DEMO) == before


async def test_good_schemas_still_go_up_cleaned(client):
    schema = {"type": "object", "additionalProperties": False,
              "properties": {"a": {"type": ["string", "null"], "title": "A"}, "b": True,
                             "c": {"type": "array", "items": True}, "d": {"oneOf": [{"type": "integer"}]},
                             "e": {"type": "string", "maxLength": 3, "enum": ["x", "y"]}},
              "required": ["a", "ghost"]}
    answer = await client.chat.completions.create(
        model="gem", messages=MESSAGES, tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}])
    assert answer.choices[0].message is not None
