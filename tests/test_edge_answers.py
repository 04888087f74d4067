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


async def raw_exchange(running, data: bytes) -> tuple[int, dict, bytes]:
    """Send ``data`` as it is (Connection: close added); the answer's status, headers and body."""
    data = data.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
    reader, writer = await asyncio.open_connection(running.server.host, running.server.port)
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("request_line, status", [
    (b"CONNECT example.com:443 HTTP/1.1", 404),  # authority form: no route can match it
    (b"OPTIONS * HTTP/1.1", 404),
    (b"TRACE /v1/models HTTP/1.1", 405),
    (b"PROPFIND /v1/chat/completions HTTP/1.1", 405),
    (b"GET /nowhere HTTP/1.1", 404),
    (b"GET http://elsewhere.example/nowhere HTTP/1.1", 404),  # absolute form
])
async def test_odd_methods_and_targets_answer_json(running, request_line, status):
    got, headers, body = await raw_exchange(running, request_line + b"\r\nHost: t\r\n\r\n")
    assert got == status and headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] in ("unknown_endpoint", "method_not_allowed")


@pytest.mark.parametrize("expect", [b"200-ok", b"\xc3\x28", b"\xff\xfe"])  # (not UTF-8: aiohttp's own answer was a 500)
async def test_an_unknown_expect_answers_json(running, expect, caplog):
    got, headers, body = await raw_exchange(
        running, b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nExpect: " + expect
        + b"\r\nContent-Length: 2\r\n\r\n{}")
    assert got == 417 and headers["content-type"] == "application/json"
    error = orjson.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "expectation_failed"
    assert "Expect: 100-continue" in error["message"]
    assert "Traceback" not in caplog.text


async def test_keys_that_are_not_utf8_are_refused_not_a_500(start_gateway):
    from business import ADMIN, biz_config

    running = await start_gateway(biz_config())
    for path, header in ((b"/v1/models", b"Authorization: Bearer \xff\xfe"), (b"/v1/models", b"X-API-Key: \xc3\x28"),
                         (b"/admin/keys", b"Authorization: Bearer \xff" + ADMIN.encode())):
        got, headers, body = await raw_exchange(running, b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + header
                                                + b"\r\n\r\n")
        assert got in (401, 403) and headers["content-type"] == "application/json", body


@pytest.mark.parametrize("messages, param", [
    ([{"role": ["user"], "content": "hi"}], "messages[0].role"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
    ([{"role": "user", "content": [7]}], "messages[0].content[0]"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": None}}]}],
     "messages[0].content[0].image_url"),
    ([{"role": "assistant", "content": None, "tool_calls": [True]}], "messages[0].tool_calls[0]"),
    ([{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}],
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "tool", "tool_call_id": 5, "content": "x"}], "messages[0].tool_call_id"),
])
async def test_malformed_messages_are_400_naming_the_field(running, messages, param):
    """These reached the mock and the translators and were bare 500s."""
    for model in ("echo", "up"):
        status, _, body = await post(running, "/v1/chat/completions",
                                     orjson.dumps({"model": model, "messages": messages}))
        assert status == 400 and body["error"]["param"] == param, body


@pytest.mark.parametrize("tools, stop", [
    ([True], None), ([{"type": "function", "function": {"name": "f", "parameters": [1]}}], None),
    (None, ["ok", 5]),
])
async def test_malformed_tools_and_stop_are_400(running, tools, stop):
    body = {**chat_body("echo"), **({"tools": tools} if tools else {}), **({"stop": stop} if stop else {})}
    status, _, answer = await post(running, "/v1/chat/completions", orjson.dumps(body))
    assert status == 400, answer


def shaped_upstream(answer: dict | bytes, *, sse: bool = False):
    """An OpenAI, Anthropic and Gemini upstream at once, answering ``answer`` to everything."""
    from aiohttp import web

    async def handle(request):
        await request.read()
        if sse:
            return web.Response(body=answer, content_type="text/event-stream")
        return web.json_response(answer)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    return app


def kinds_config(root: str) -> dict:
    config = base_config()
    for kind, base in (("openai", root + "/v1"), ("anthropic", root), ("gemini", root)):
        config["providers"][kind] = {"kind": kind, "base_url": base, "api_key": "k"}
        config["models"][kind] = {"provider": kind, "price": {"input": 1, "output": 1}}
    return config


@pytest.mark.parametrize("answer", [
    {"choices": "nope", "content": 5, "candidates": [1], "usage": []},
    {"choices": [{"message": 3}], "content": [{"type": "text", "text": None}], "candidates": "x"},
    {"choices": [None], "content": {"a": 1}, "candidates": [{"content": {"parts": 5}}], "usageMetadata": 7},
])
async def test_an_upstream_answer_of_an_unexpected_shape_is_502(start_gateway, aiohttp_server, answer):
    upstream = await aiohttp_server(shaped_upstream(answer))
    running = await start_gateway(kinds_config(str(upstream.make_url("")).rstrip("/")))
    for kind in ("openai", "anthropic", "gemini"):
        for path, body in (("/v1/chat/completions", chat_body(kind)),
                           ("/v1/messages", {**chat_body(kind), "max_tokens": 10})):
            status, ctype, got = await post(running, path, orjson.dumps(body))
            assert status in (200, 502) and ctype == "application/json", (kind, path, got)
            if status == 502:
                assert "unexpected shape" in str(got) or "upstream" in str(got)


@pytest.mark.parametrize("events", [
    b'data: {"choices": 5}\n\ndata: {"choices": [{"delta": [1]}]}\n\ndata: [DONE]\n\n',
    b'event: message_start\ndata: {"type": "message_start", "message": 3}\n\n'
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": "x"}\n\n',
    b'data: {"candidates": [{"content": {"parts": "x"}}], "usageMetadata": []}\n\n',
])
async def test_an_unreadable_stream_event_ends_the_stream_in_band(start_gateway, aiohttp_server, events):
    upstream = await aiohttp_server(shaped_upstream(events, sse=True))
    running = await start_gateway(kinds_config(str(upstream.make_url("")).rstrip("/")))
    for kind in ("openai", "anthropic", "gemini"):
        for path, body in (("/v1/chat/completions", chat_body(kind)),
                           ("/v1/messages", {**chat_body(kind), "max_tokens": 10})):
            async with aiohttp.ClientSession() as s, s.post(running.root + path, json={**body, "stream": True}) as r:
                raw = await r.read()
            assert r.status in (200, 502), (kind, path, raw)
            assert b"internal" not in raw, (kind, path, raw)
            if r.status == 200 and path == "/v1/chat/completions":
                assert raw.endswith(b"data: [DONE]\n\n"), (kind, raw)


async def billed(running) -> list[tuple]:
    from plugins.accounts import ACCOUNTS

    await running.gw.services[ACCOUNTS].writer.flush()
    return await running.gw.store.fetchall("select status, cost_micro_usd, estimated from tollway_ledger")


async def test_negative_upstream_usage_is_unknown_usage_not_free_output(start_gateway, aiohttp_server):
    from business import DEMO, bearer, biz_config

    answer = {"id": "x", "object": "chat.completion", "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "some words"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": -10**8, "completion_tokens": -10**8, "total_tokens": -2 * 10**8}}
    upstream = await aiohttp_server(shaped_upstream(answer))
    running = await start_gateway(biz_config(str(upstream.make_url("/v1"))))
    async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", json=chat_body(),
                                                    headers=bearer(DEMO)) as r:
        assert r.status == 200
        usage = (await r.json())["usage"]
    assert usage["estimated"] is True and usage["cost"] > 0
    [(status, cost, estimated)] = await billed(running)
    assert (status, estimated) == (200, 1) and cost > 0


async def test_a_malformed_chunk_in_a_stream_without_usage_is_still_billed(start_gateway, aiohttp_server):
    from business import DEMO, bearer, biz_config

    events = (b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "some words"}}]}\n\n'
              b'data: {"choices": 5}\n\ndata: {"choices": [{"delta": {"tool_calls": 3}}]}\n\ndata: [DONE]\n\n')
    upstream = await aiohttp_server(shaped_upstream(events, sse=True))
    running = await start_gateway(biz_config(str(upstream.make_url("/v1"))))
    async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions",
                                                    json={**chat_body(), "stream": True}, headers=bearer(DEMO)) as r:
        raw = await r.read()
    assert raw.endswith(b"data: [DONE]\n\n") and b"internal" not in raw
    [(status, cost, estimated)] = await billed(running)
    assert status == 200 and estimated == 1 and cost > 0
