"""What careless or hostile clients send: each gets the right status and an OpenAI-shaped error."""

from __future__ import annotations

import aiohttp
import pytest
from conftest import base_config


@pytest.fixture
async def running(start_gateway):
    config = base_config()
    config["server"]["max_body_bytes"] = 4096
    return await start_gateway(config)


async def post(url: str, data: bytes, headers: dict | None = None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers or {}) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


def assert_openai_error(body: dict) -> dict:
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    return err


@pytest.mark.parametrize("data, param, fragment", [
    (b"{not json", None, "not valid JSON"),
    (b"", None, "empty"),
    (b"[1, 2]", None, "JSON object"),
    (b'"text"', None, "JSON object"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model", "'model' is required"),
    (b'{"model": "", "messages": [{"role": "user", "content": "x"}]}', "model", "non-empty"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model", "non-empty string"),
    (b'{"model": "echo"}', "messages", "'messages' is required"),
    (b'{"model": "echo", "messages": []}', "messages", "non-empty list"),
    (b'{"model": "echo", "messages": "hi"}', "messages", "non-empty list"),
    (b'{"model": "echo", "messages": ["hi"]}', "messages[0]", "object"),
    (b'{"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role", "one of"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": 7}]}', "messages[0].content", "string"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream", "true or false"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature",
     "between 0 and 2"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature",
     "between 0 and 2"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "max_tokens",
     "at least 1"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": true}', "max_tokens",
     "integer"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream_options": 1}', "stream_options",
     "object"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n", "between 1 and 128"),
])
async def test_bad_chat_bodies_are_400(running, data, param, fragment):
    status, body, headers = await post(f"{running.url}/chat/completions", data)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    err = assert_openai_error(body)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert fragment in err["message"]


@pytest.mark.parametrize("data, param", [
    (b'{"model": "echo"}', "input"),
    (b'{"model": "echo", "input": ""}', "input"),
    (b'{"model": "echo", "input": []}', "input"),
    (b'{"model": "echo", "input": [{"a": 1}]}', "input[0]"),
    (b'{"input": "x"}', "model"),
    # dimensions with one string input too (unchecked before: 0 answered 200, "8" a 500 from the mock)
    (b'{"model": "echo", "input": "x", "dimensions": 0}', "dimensions"),
    (b'{"model": "echo", "input": "x", "dimensions": "8"}', "dimensions"),
    (b'{"model": "echo", "input": ["x"], "dimensions": 0}', "dimensions"),
])
async def test_bad_embeddings_bodies_are_400(running, data, param):
    status, body, _ = await post(f"{running.url}/embeddings", data)
    assert status == 400
    assert assert_openai_error(body)["param"] == param


async def test_body_over_limit_is_413(running):
    big = b'{"model": "echo", "messages": [{"role": "user", "content": "' + b"x" * 8000 + b'"}]}'
    status, body, _ = await post(f"{running.url}/chat/completions", big)
    assert status == 413
    err = assert_openai_error(body)
    assert "4096 bytes" in err["message"]


async def test_body_over_limit_without_content_length_is_413(running):
    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    async with aiohttp.ClientSession() as s, s.post(f"{running.url}/chat/completions", data=chunks()) as r:
        assert r.status == 413
        assert_openai_error(await r.json())


async def test_unknown_model_is_404(running):
    status, body, _ = await post(f"{running.url}/chat/completions",
                                 b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}')
    assert status == 404
    err = assert_openai_error(body)
    assert err["code"] == "model_not_found" and "gpt-9" in err["message"]


async def test_unknown_path_and_wrong_method(running):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{running.url}/nothing-here") as r:
            assert r.status == 404
            assert assert_openai_error(await r.json())["code"] == "unknown_endpoint"
        async with s.get(f"{running.url}/chat/completions") as r:
            assert r.status == 405
            assert r.headers["Allow"] == "POST"
            assert "use POST" in assert_openai_error(await r.json())["message"]


async def test_non_utf8_and_huge_numbers_do_not_500(running):
    for data in (b'{"model": "echo", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
                 b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}',
                 b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": 99999999999999999999}'):
        status, body, _ = await post(f"{running.url}/chat/completions", data)
        assert status == 400, body
        assert_openai_error(body)
