"""The direct dispatch of the routes at fixed paths (``proxy/dispatch.py``) and the one-write
answers (``proxy/onewrite.py``) against aiohttp's own router, middleware chain and response
writer, through the real server: the same raw bytes back (the Date line and the mock's
``created`` second aside) for model calls, streams, errors in both dialects, 405/404/413/417,
HEAD, HTTP/1.0, ``Connection: close``, ``Expect``, query strings and paths that only look
like a route's, and the same keep-alive answer to a second request on the connection."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest
from conftest import base_config

import proxy.dispatch
import proxy.onewrite
from proxy.dispatch import fixed_routes

CHAT = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hello there"}]})
STREAM = orjson.dumps({"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
UP_WHOLE = orjson.dumps({"model": "up", "stream": True, "stream_options": {"include_usage": True},
                         "messages": [{"role": "user", "content": "hi"}], "mock": {"one_write": True}})
UP_PACED = orjson.dumps({"model": "up", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
UP_EMPTY = orjson.dumps({"model": "up", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                         "mock": {"one_write": True, "chunks": 0, "no_done": True}})
MESSAGES = orjson.dumps({"model": "echo", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})


def post(target: str, body: bytes = CHAT, head: str = "", version: str = "1.1") -> bytes:
    return (f"POST {target} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body


REQUESTS = [
    post("/v1/chat/completions"),
    post("/v1/chat/completions?x=1"),
    post("/v1/chat/completions", head="Connection: close\r\n"),
    post("/v1/chat/completions", version="1.0"),
    post("/v1/chat/completions", head="Connection: keep-alive\r\n", version="1.0"),
    post("/v1/chat/completions", head="Expect: 100-continue\r\n"),
    post("/v1/chat/completions", head="Expect: nonsense\r\n"),
    post("/v1/chat/completions", head="Expect: \r\n"),
    post("/v1/chat/completions", STREAM),
    post("/v1/chat/completions", UP_WHOLE),
    post("/v1/chat/completions", UP_WHOLE, version="1.0"),
    post("/v1/chat/completions", UP_PACED),
    post("/v1/chat/completions", UP_EMPTY),
    post("/v1/chat/completions", orjson.dumps({"model": "up", "messages": [{"role": "user", "content": "hi"}]})),
    post("/v1/messages", orjson.dumps({"model": "up", "max_tokens": 9, "stream": True, "mock": {"one_write": True},
                                       "messages": [{"role": "user", "content": "hi"}]})),
    post("/v1/chat/completions", b"{not json"),
    post("/v1/chat/completions", b""),
    post("/v1/chat/completions", b"x" * 3000),
    post("/v1/chat/completions", orjson.dumps({"model": "nope", "messages": [{"role": "user", "content": "a"}]})),
    post("/v1/chat/completions/"),
    post("//v1/chat/completions"),
    post("/v1/chat/completions%2F"),
    post("/v1/chat/%63ompletions"),
    post("/V1/chat/completions"),
    post("/v1/embeddings", orjson.dumps({"model": "echo", "input": "some words"})),
    post("/v1/completions", orjson.dumps({"model": "echo", "prompt": "say"})),
    post("/v1/messages", MESSAGES),
    post("/v1/messages", b"[]"),
    post("/v1/responses", orjson.dumps({"model": "echo", "input": "hi"})),
    post("/health"),
    post("/admin/reload", b""),
    b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/models/echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
    b"DELETE /v1/embeddings HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
]

SECOND = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


async def read_answer(reader: asyncio.StreamReader, head_request: bool = False) -> bytes:
    """One answer's bytes (an interim 100 and the final one), framed as it says; b"" at EOF."""
    out = b""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            return out + exc.partial
        out += head
        if not head.startswith(b"HTTP/1.1 100 "):
            break
    lower = head.lower()
    if head_request:
        return out
    if b"\r\ncontent-length: " in lower:
        length = int(lower.split(b"\r\ncontent-length: ", 1)[1].split(b"\r\n", 1)[0])
        return out + await reader.readexactly(length)
    if b"\r\ntransfer-encoding: chunked" in lower:
        # (the data, not the chunks' sizes: where a stream's chunks are cut depends on timing)
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            out += (await reader.readexactly(size + 2))[:size]
            if size == 0:
                return out
    return out + await reader.read()


async def exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """The answer to ``request``, then the answer to a second request on the same connection
    (b"" when the server closed it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(20):
            first = await read_answer(reader, request.startswith(b"HEAD "))
        second = b""
        if not reader.at_eof():
            try:
                writer.write(SECOND)
                async with asyncio.timeout(20):
                    second = await read_answer(reader)
            except ConnectionError:
                second = b""
        return first, second
    finally:
        writer.close()


def normal(answer: bytes) -> bytes:
    answer = re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", answer)
    answer = re.sub(rb"\r\nx-tollway-request-id: [0-9a-f]+\r\n", b"\r\nx-tollway-request-id: -\r\n", answer)
    answer = re.sub(rb'"created": ?\d+', b'"created":0', answer)
    answer = re.sub(rb'"created_at": ?(\d+|"[^"]*")', b'"created_at":0', answer)
    # (random ids, e.g. msg_..., resp_..., made again by every answer: the same length, so the same Content-Length)
    return re.sub(rb'"(msg|resp|item|rs|fc|msgitem)_([0-9a-f]+)"', lambda m: b'"%s_%s"' % (m[1], b"0" * len(m[2])),
                  answer)


def config(upstream: str) -> dict:
    return base_config(upstream, server={"access_log": "off", "max_body_bytes": 2000})


async def answers(start_gateway, monkeypatch, upstream: str, direct: bool) -> list[tuple[bytes, bytes]]:
    monkeypatch.setattr(proxy.dispatch, "ENABLED", direct)
    monkeypatch.setattr(proxy.onewrite, "ENABLED", direct)
    gw = await start_gateway(config(upstream))
    port = gw.server.port
    return [tuple(normal(a) for a in await exchange(port, r)) for r in REQUESTS]


async def test_direct_dispatch_and_one_write_answer_as_aiohttp_does(start_gateway, mock_upstream, monkeypatch):
    theirs = await answers(start_gateway, monkeypatch, mock_upstream.url, direct=False)
    ours = await answers(start_gateway, monkeypatch, mock_upstream.url, direct=True)
    for request, mine, aiohttps in zip(REQUESTS, ours, theirs, strict=True):
        assert mine == aiohttps, (request[:80], mine, aiohttps)
    statuses = {a[0].split(b"\r\n", 1)[0] for a in ours}
    # (the table covers what it says it does)
    assert {b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 404 Not Found",
            b"HTTP/1.1 405 Method Not Allowed", b"HTTP/1.1 413 Request Entity Too Large",
            b"HTTP/1.1 417 Expectation Failed", b"HTTP/1.1 100 Continue",
            b"HTTP/1.0 415 Unsupported Media Type", b"HTTP/1.0 431 Request Header Fields Too Large"} <= statuses


async def test_the_model_routes_are_dispatched_directly(start_gateway, mock_upstream):
    gw = await start_gateway(config(mock_upstream.url))
    table = await fixed_routes(gw.server.app)
    assert {("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"), ("POST", "/v1/messages"),
            ("POST", "/v1/completions"), ("POST", "/v1/responses"), ("GET", "/health")} <= set(table)
    assert not any("{" in path for _, path in table)
    assert gw.server.runner.server.request_handler is not gw.server.app._handle


@pytest.mark.parametrize("extra", ["middleware", "on_response_prepare"])
async def test_anything_more_to_run_goes_through_aiohttp(start_gateway, mock_upstream, extra):
    from aiohttp import web

    from proxy.app import make_app

    gw = await start_gateway(config(mock_upstream.url))
    app = make_app(gw.gw)
    if extra == "middleware":
        @web.middleware
        async def other(request, handler):
            return await handler(request)

        app.middlewares.append(other)
    else:
        async def hear(request, response):
            return None

        app.on_response_prepare.append(hear)
    assert await fixed_routes(app) == {}


async def test_a_streams_head_waits_for_its_first_bytes_only_when_the_upstream_answer_is_all_in(
        start_gateway, mock_upstream, serve_upstream, monkeypatch):
    """One-write upstream: the head goes with the first bytes (``head_with_first_bytes``, or
    ``start_sse`` held).
    An upstream that sends part of an event and then nothing: the client has the head at
    once (not when an event is complete, nor at the upstream's idle timeout, 30 s here,
    which the read would outlast)."""
    from aiohttp import web

    import proxy.forward

    deferred = []  # the streams whose head was held for their first bytes (either way of starting them)
    real = proxy.forward.head_with_first_bytes
    monkeypatch.setattr(proxy.forward, "head_with_first_bytes", lambda resp: (deferred.append(resp), real(resp)))
    real_started = proxy.forward._started_stream

    def started(call, request, held):
        resp = real_started(call, request, held)
        if held and resp is not None:
            deferred.append(resp)
        return resp

    monkeypatch.setattr(proxy.forward, "_started_stream", started)

    head_seen = asyncio.Event()

    async def partial(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"he')
        await head_seen.wait()  # (the rest once the client has the head: no waiting at the end)
        await resp.write(b'llo"}}]}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    silent = await serve_upstream({"POST /v1/chat/completions": partial})
    cfg = config(mock_upstream.url)
    cfg["providers"]["silent"] = {"kind": "openai", "base_url": silent.url, "api_key": "sk-x",
                                  "timeouts": {"connect": 2, "first_byte": 30, "idle": 30, "total": 60}}
    cfg["models"]["silent"] = {"provider": "silent", "price": {"input": 1.0, "output": 2.0}}
    gw = await start_gateway(cfg)
    first, _ = await exchange(gw.server.port, post("/v1/chat/completions", UP_WHOLE))
    assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(b"data: [DONE]\n\n") and len(deferred) == 1
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    try:
        writer.write(post("/v1/chat/completions", orjson.dumps(
            {"model": "silent", "stream": True, "messages": [{"role": "user", "content": "hi"}]})))
        async with asyncio.timeout(20):
            head = await reader.readuntil(b"\r\n\r\n")
        head_seen.set()
        assert head.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in head and len(deferred) == 1
    finally:
        head_seen.set()
        writer.close()
