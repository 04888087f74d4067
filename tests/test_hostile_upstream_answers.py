"""A hostile or broken upstream's answers (not its usage counts: see
test_hostile_upstream_usage.py), through the real server with the business plugins, on
each upstream kind: status 200 with an error body, a body that is not JSON, a body cut
short of its Content-Length, a body larger than any sane answer, a stream of keep-alive
comments only, usage after the stream's end, usage that contradicts itself (cached above
the prompt, reasoning above the output), usage that comes after the client hung up.

Checked each time: the charge is >= 0 and within the hold, the balance >= 0, the ledger ==
the money taken == what the client was told, and the client gets an answer or a clear
error in its dialect (never a 500)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from aiohttp import web
from business import DEMO, KINDS, bearer, credits, kinds_config, ledger_rows

STATE: web.AppKey[dict] = web.AppKey("state")
TEXT = "the answer that went out " * 8
BIG = 65 * 1024 * 1024  # above proxy.upstream.MAX_UPSTREAM_BODY (64 MiB)


def _sse(data: bytes, name: bytes | None = None) -> bytes:
    return (b"event: " + name + b"\n" if name else b"") + b"data: " + data + b"\n\n"


ERROR_BODY = {"openai": b'{"error":{"message":"overloaded","type":"server_error","code":null}}',
              "anthropic": b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
              "gemini": b'{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}'}


async def answer(request: web.Request) -> web.StreamResponse:
    """One upstream for the three kinds; ``mode`` (the app's state) says how it misbehaves."""
    await request.read()
    kind = ("openai" if request.path.endswith("/chat/completions") else
            "anthropic" if request.path.endswith("/messages") else "gemini")
    mode = request.app[STATE]["mode"]
    if mode == "error-200":
        return web.Response(content_type="application/json", body=ERROR_BODY[kind])
    if mode == "not-json":
        return web.Response(content_type="text/html", body=b"<html><body>502 Bad Gateway</body></html>")
    if mode == "truncated":
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "5000"})
        await resp.prepare(request)
        await resp.write(b'{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"content":"')
        request.transport.close()
        return resp
    if mode == "huge":
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = BIG
        await resp.prepare(request)
        piece = b" " * (1024 * 1024)
        try:
            for _ in range(BIG // len(piece)):
                await resp.write(piece)
        except ConnectionError:
            pass
        return resp
    if mode == "keep-alive":
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b": keep-alive\n\n")
                await asyncio.sleep(0.2)
        except ConnectionError:
            return resp
    raise AssertionError(mode)


@pytest.fixture
async def upstream(serve_upstream):
    app = web.Application()
    app[STATE] = {"mode": ""}
    return await serve_upstream({"POST /v1/chat/completions": answer, "POST /v1/messages": answer,
                                 "POST /v1beta/models/{target}": answer}, app)


async def post(s: aiohttp.ClientSession, running, model: str, stream: bool) -> tuple[int, bytes]:
    body = {"model": model, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with s.post(running.url + "/chat/completions", json=body, headers=bearer(DEMO)) as r:
        return r.status, await r.read()


async def no_money_taken(s: aiohttp.ClientSession, running, code: str) -> None:
    got = await credits(s, running, DEMO)
    assert (got["spent_micro_usd"], got["balance_micro_usd"], got["reserved_micro_usd"]) == (0, 5_000_000, 0)
    [row] = await ledger_rows(running, "cost", "completion", "error_code")
    assert row == {"cost": 0, "completion": 0, "error_code": code}


@pytest.mark.parametrize(("kind", "status", "code"), [("openai", 502, "upstream_error"),
                                                      ("anthropic", 502, "upstream_error"),
                                                      ("gemini", 503, "upstream_overloaded")])
async def test_an_error_body_with_status_200_is_an_error_and_free(start_gateway, upstream, kind, status, code):
    """Some relays answer an upstream's failure with status 200 and the error in the body.
    It was an answer: a 200 (OpenAI: the error body as it came; Anthropic, Gemini: an empty
    completion) charged the whole reservation, 1087 micro-USD, with no cost told."""
    upstream.app[STATE]["mode"] = "error-200"
    running = await start_gateway(kinds_config(upstream))
    async with aiohttp.ClientSession() as s:
        got, raw = await post(s, running, kind, False)
        assert (got, orjson.loads(raw)["error"]["code"]) == (status, code), raw
        await no_money_taken(s, running, code)


async def test_an_error_body_with_status_200_is_an_error_in_the_anthropic_dialect(start_gateway, upstream):
    upstream.app[STATE]["mode"] = "error-200"
    running = await start_gateway(kinds_config(upstream))
    body = {"model": "anthropic", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/messages", json=body, headers={"x-api-key": DEMO}) as r:
            answer = await r.json()
            assert r.status == 502, answer
        assert answer["type"] == "error" and answer["error"]["type"] == "api_error", answer
        await no_money_taken(s, running, "upstream_error")


BROKEN = [(kind, mode, code) for mode, code in (("not-json", "upstream_bad_response"),
                                                 ("truncated", "upstream_disconnected")) for kind in KINDS]


@pytest.mark.parametrize(("kind", "mode", "code"), [*BROKEN, ("openai", "huge", "upstream_too_large")])
async def test_a_broken_answer_is_a_clear_error_and_free(start_gateway, upstream, kind, mode, code):
    """Held before: an HTML page, a body cut short of its Content-Length, a body past 64 MiB
    (the bound is the core's, the same for every kind)."""
    upstream.app[STATE]["mode"] = mode
    running = await start_gateway(kinds_config(upstream))
    async with aiohttp.ClientSession() as s:
        got, raw = await post(s, running, kind, False)
        assert (got, orjson.loads(raw)["error"]["code"]) == (502, code), raw
        await no_money_taken(s, running, code)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_of_keep_alive_comments_ends_at_the_total_timeout_free(start_gateway, upstream, kind):
    """Held before: comments reset the idle timeout, but not the total one."""
    upstream.app[STATE]["mode"] = "keep-alive"
    running = await start_gateway(kinds_config(upstream, total=2))
    async with aiohttp.ClientSession() as s:
        got, raw = await post(s, running, kind, True)
        assert got == 200
        events = [e for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]"
        assert orjson.loads(events[-2][6:])["error"]["code"] == "upstream_timeout_total", raw[-300:]
        await no_money_taken(s, running, "upstream_timeout_total")
