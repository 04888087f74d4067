"""Every answer is JSON in the client's dialect: hostile bodies, encodings and
upstream headers that used to end in a bare 500."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import aiohttp
import orjson
import pytest
from conftest import base_config

from proxy.validate import MAX_JSON_DEPTH


def nested(levels: int) -> bytes:
    """A JSON value ``levels`` objects deep (written by hand: orjson writes at most 254)."""
    return b'{"a":' * levels + b"1" + b"}" * levels


def chat_body(model: str = "up") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def with_field(body: dict, name: str, value: bytes) -> bytes:
    return orjson.dumps(body)[:-1] + b',"' + name.encode() + b'":' + value + b"}"


@pytest.fixture
async def running(start_gateway, mock_upstream):
    return await start_gateway(base_config(mock_upstream.url))


async def post(running, path: str, data: bytes, headers: dict | None = None) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession() as s, s.post(
            running.root + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}) as r:
        return r.status, r.headers.get("Content-Type", ""), orjson.loads(await r.read())


@pytest.mark.parametrize("levels", [65, 300, 1000])
async def test_a_body_nested_too_deep_is_400_naming_the_limit(running, levels):
    """On a model whose name is mapped (the body is written again): was a bare 500 from 255 levels."""
    # the body itself is one level: the extra field adds levels - 1
    status, ctype, body = await post(running, "/v1/chat/completions",
                                     with_field(chat_body(), "extra", nested(levels - 1)))
    assert (status, ctype) == (400, "application/json")
    assert body["error"]["code"] == "json_too_deep" and f"limit is {MAX_JSON_DEPTH}" in body["error"]["message"]


async def test_a_body_at_the_depth_limit_is_served(running):
    status, _, body = await post(running, "/v1/chat/completions",
                                 with_field(chat_body(), "extra", nested(MAX_JSON_DEPTH - 1)))
    assert status == 200, body


async def test_too_deep_on_the_messages_api_is_anthropic_shaped(start_gateway):
    running = await start_gateway(base_config())
    body = {"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    status, _, answer = await post(running, "/v1/messages", with_field(body, "metadata", nested(300)))
    assert status == 400 and answer["type"] == "error" and "limit is 64" in answer["error"]["message"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
async def test_a_body_that_does_not_decode_is_400(running, encoding):
    status, ctype, body = await post(running, "/v1/chat/completions", b"this is not compressed at all",
                                     {"Content-Encoding": encoding})
    assert ctype == "application/json"
    assert status in (400, 415), body  # 415: an encoding this build of aiohttp cannot decode at all
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_compressed_body_is_read(running, encoding, compress):
    status, _, body = await post(running, "/v1/chat/completions", compress(orjson.dumps(chat_body())),
                                 {"Content-Encoding": encoding})
    assert status == 200, body


async def raw_upstream(answer: bytes):
    """An upstream that reads one request and writes ``answer`` as it is."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize("value, sent", [
    (b"5\rX-Injected: 1", "1"),
    (b"soon", "1"),
    (b"7", "7"),
    (b"Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"),
])
async def test_an_upstream_retry_after_passes_only_when_it_is_one(start_gateway, value, sent):
    body = b'{"error": {"message": "slow down"}}'
    server = await raw_upstream(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                                b"Retry-After: " + value + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        running = await start_gateway(base_config(url))
        async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", json=chat_body()) as r:
            answer = orjson.loads(await r.read())
            # 502 if the upstream's header block is refused as malformed; never a bare 500
            assert r.status in (429, 502), answer
            if r.status == 429:
                assert r.headers["Retry-After"] == sent and "X-Injected" not in r.headers
                assert answer["error"]["code"] == "upstream_rate_limited"
    finally:
        server.close()
