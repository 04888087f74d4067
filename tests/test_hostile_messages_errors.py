"""Every error on ``/v1/messages`` in Anthropic's shape (``{"type": "error", "error": {"type",
"message"}}``), through the real server.

Before: a request head the HTTP parser refused (a control byte in a header, a header name with a
space, two Content-Lengths, broken chunked framing, a byte that is not ASCII in the target, a
method that is not one) was answered in the OpenAI shape (``{"error": {..., "code"}}``) whatever
the path, because the parser's placeholder request has no path; so was a head that came too
slowly (408); and a Content-Encoding aiohttp cannot decode (br, zstd) was that OpenAI-shaped 400
telling the client to "install `Brotli`"; a request line or header over aiohttp's 8190 bytes
was a 400 quoting its first bytes. Now the path is read from the refused bytes; the unknown
coding is a 415 naming it; the long line a 431 saying so. The errors the gateway answers itself (401, 402, 404, 413,
429 with Retry-After, 502, 503) were already Anthropic-shaped: the SDK's exception class for
each is checked too."""

from __future__ import annotations

import asyncio

import anthropic
import orjson
import pytest
from aiohttp import web
from business import DEMO, biz_config
from conftest import base_config

HEADS = [
    (b"POST {path} HTTP/1.1\r\nHost: x\r\nX-Bad: \x01\x02\r\nContent-Length: 2\r\n\r\n{{}}", 400),
    (b"POST {path} HTTP/1.1\r\nHost: x\r\nBad Header: y\r\nContent-Length: 2\r\n\r\n{{}}", 400),
    (b"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}", 400),
    (b"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n", 400),
    (b"POST {path}?\xff HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}", 400),
    (b"BREW {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}", 400),
    (b"POST http://x{path} HTTP/1.1\r\nHost: x\r\nX-Bad: \x7f\r\nContent-Length: 2\r\n\r\n{{}}", 400),
    (b"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{{}}", 415),
    (b"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Encoding: zstd\r\nContent-Length: 2\r\n\r\n{{}}", 415),
    (b"POST {path} HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\nContent-Length: 2\r\n\r\n{{}}", 431),
]


async def exchange(running, *chunks: bytes) -> tuple[int, dict]:
    """Send ``chunks`` on one connection (the next once the previous is written) and read the
    answer until the gateway closes: (status, JSON body)."""
    reader, writer = await asyncio.open_connection(running.server.host, running.server.port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.05)  # (ordering only: the head comes in several reads)
        async with asyncio.timeout(30):  # a hang guard
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


def assert_anthropic(body: dict, kind: str = "invalid_request_error") -> str:
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind, body
    return body["error"]["message"]


@pytest.fixture
async def running(start_gateway):
    config = base_config()
    config["server"].update(base_path="/api/v1", timeouts={"header_read": 1})
    return await start_gateway(config)


HEAD_NAMES = ["control-byte", "space-in-name", "two-lengths", "bad-chunk", "non-ascii-target", "unknown-method",
              "absolute-form", "br", "zstd", "long-header"]


@pytest.mark.parametrize(("head", "status"), HEADS, ids=HEAD_NAMES)
@pytest.mark.parametrize("path", ["/v1/messages", "/api/v1/messages", "/v1/messages/count_tokens"])
async def test_a_refused_head_on_the_messages_api_is_answered_in_anthropic_shape(running, head, status, path):
    got, body = await exchange(running, head.replace(b"{path}", path.encode()).replace(b"{{}}", b"{}"))
    assert got == status
    message = assert_anthropic(body)
    if status == 415:
        assert message.startswith("the request body's Content-Encoding") and "install" not in message
    if status == 431:  # (before: 400 quoting the line's first bytes)
        assert message == "the request line or a header is longer than the gateway's limit of 8190 bytes"
    # the same head elsewhere: OpenAI's shape, as before
    got, body = await exchange(running, head.replace(b"{path}", b"/v1/chat/completions").replace(b"{{}}", b"{}"))
    assert got == status and set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


async def test_a_head_refused_in_a_later_read_is_still_anthropic(running):
    got, body = await exchange(running, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n", b"X-Bad: \x01\r\n\r\n")
    assert got == 400
    assert_anthropic(body)


async def test_a_slow_head_on_the_messages_api_is_an_anthropic_408(running):
    reader, writer = await asyncio.open_connection(running.server.host, running.server.port)
    try:
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        async with asyncio.timeout(30):  # a hang guard (header_read is 1 s)
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert_anthropic(orjson.loads(body), "timeout_error")


async def test_the_sdk_gets_each_error_as_its_exception_class(start_gateway, serve_upstream):
    async def down(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "overloaded"}}, status=503)

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "broke"}}, status=500)

    up_down = await serve_upstream({"POST /v1/chat/completions": down})
    up_broken = await serve_upstream({"POST /v1/chat/completions": broken})
    keys = [{"name": "demo", "key": DEMO, "credits": 5.0, "limits": {"rpm": 6}},
            {"name": "poor", "key": "sk-poor-000000000001", "credits": 0.0}]
    config = biz_config(up_down.url, keys=keys)
    config["server"]["max_body_bytes"] = 4096
    config["providers"]["broken"] = {"kind": "openai", "base_url": up_broken.url, "api_key": "x"}
    config["models"]["broken"] = {"provider": "broken", "price": {"input": 1.0, "output": 1.0}}
    running = await start_gateway(config)
    hi = [{"role": "user", "content": "hi"}]
    cases = [("sk-wrong-000000000001", "echo", hi, anthropic.AuthenticationError, "authentication_error"),
             ("sk-poor-000000000001", "echo", hi, anthropic.PaymentRequiredError, "billing_error"),
             (DEMO, "nope", hi, anthropic.NotFoundError, "not_found_error"),
             (DEMO, "echo", [{"role": "user", "content": "x" * 5000}], anthropic.ContentTooLargeError,
              "request_too_large"),
             (DEMO, "broken", hi, anthropic.InternalServerError, "api_error"),
             (DEMO, "up", hi, anthropic.ServiceUnavailableError, "overloaded_error")]
    for key, model, messages, error, kind in cases:
        async with anthropic.AsyncAnthropic(base_url=running.root, api_key=key, max_retries=0) as client:
            with pytest.raises(error) as raised:
                await client.messages.create(model=model, max_tokens=10, messages=messages)
        assert type(raised.value) is error
        assert_anthropic(raised.value.body, kind)
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0) as client:
        with pytest.raises(anthropic.RateLimitError) as limited:
            for _ in range(10):
                await client.messages.create(model="echo", max_tokens=10, messages=hi)
    assert_anthropic(limited.value.body, "rate_limit_error")
    assert int(limited.value.response.headers["retry-after"]) >= 1
