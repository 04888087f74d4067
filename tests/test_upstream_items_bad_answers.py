"""Anthropic's count_tokens and a stored response (GET/DELETE /v1/responses/{id}) from an
upstream that answers 200 with something that is not the answer (HTML, invalid JSON,
a JSON list, a negative or missing count): a 502 naming the upstream, never the
junk passed on as a 200 labelled JSON."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web
from business import DEMO, add_claude, bearer, biz_config

JUNK: web.AppKey[dict] = web.AppKey("junk")
ANSWERS = {
    "html": (b"<html>oops</html>", "text/html"),
    "invalid JSON": (b"{x", "application/json"),
    "a list": (b"[1]", "application/json"),
    "a negative count": (b'{"input_tokens": -5}', "application/json"),
    "no count": (b'{"tokens": 5}', "application/json"),
}


async def junk(request: web.Request) -> web.Response:
    await request.read()
    body, content_type = ANSWERS[request.app[JUNK]["answer"]]
    return web.Response(body=body, headers={"Content-Type": content_type})


async def create(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"id": "resp_1", "object": "response", "status": "completed", "model": "m",
                              "output": [], "usage": {"input_tokens": 1, "output_tokens": 1}})


@pytest.fixture
async def running(start_gateway, serve_upstream):
    app = web.Application()
    app[JUNK] = {}
    server = await serve_upstream({"POST /v1/messages/count_tokens": junk, "POST /v1/responses": create,
                                   "* /v1/responses/{rid}": junk}, app)
    running = await start_gateway(add_claude(biz_config(server.url), server.root, model="c"))
    running.app = app
    return running


@pytest.mark.parametrize("answer", list(ANSWERS))
async def test_count_tokens_junk_is_a_502(running, answer):
    running.app[JUNK]["answer"] = answer
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(running.url + "/messages/count_tokens", json=body,
                                                    headers={"x-api-key": DEMO}) as r:
        assert r.status == 502
        error = orjson.loads(await r.read())
    assert error["type"] == "error" and "claude" in error["error"]["message"]  # Anthropic's shape


@pytest.mark.parametrize("answer", ["html", "invalid JSON", "a list"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_a_stored_response_junk_is_a_502(running, answer, method):
    running.app[JUNK]["answer"] = answer
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/responses", json={"model": "up", "input": "hi"}, headers=bearer(DEMO)) as r:
            assert r.status == 200
        async with s.request(method, running.url + "/responses/resp_1", headers=bearer(DEMO)) as r:
            assert r.status == 502
            error = orjson.loads(await r.read())["error"]
    assert error["code"] == "upstream_bad_response" and "'up'" in error["message"]
