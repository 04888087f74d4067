"""GET/DELETE /v1/responses/{id} pass the client's query string to the upstream that
stores the response (OpenAI's ``include[]`` and the like), but never the gateway key
a client may authenticate with (``?api_key=``): that key is the customer's secret
and must not reach a third party's logs."""

from __future__ import annotations

import aiohttp
import pytest
import yarl
from aiohttp import web
from business import DEMO, bearer, biz_config

SEEN: web.AppKey[list] = web.AppKey("seen")


async def create(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"id": "resp_abc", "object": "response", "status": "completed", "model": "m",
                              "output": [], "usage": {"input_tokens": 1, "output_tokens": 1}})


async def stored(request: web.Request) -> web.Response:
    request.app[SEEN].append((request.method, request.path_qs))
    if request.method == "DELETE":
        return web.json_response({"id": "resp_abc", "object": "response.deleted", "deleted": True})
    return web.json_response({"id": "resp_abc", "object": "response", "status": "completed", "output": []})


@pytest.fixture
async def upstream(serve_upstream):
    app = web.Application()
    app[SEEN] = []
    return await serve_upstream({"POST /v1/responses": create, "* /v1/responses/{rid}": stored}, app)


@pytest.mark.parametrize("name", ["api_key", "api%5Fkey"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_the_gateway_key_in_the_query_string_is_not_passed_upstream(start_gateway, upstream, method, name):
    running = await start_gateway(biz_config(upstream.url))
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/responses", json={"model": "up", "input": "hi"}, headers=bearer(DEMO)) as r:
            assert r.status == 200
        url = f"{running.url}/responses/resp_abc?include[]=message.output_text.logprobs&{name}={DEMO}"
        async with s.request(method, yarl.URL(url, encoded=True)) as r:
            assert r.status == 200, await r.text()
    [(seen_method, path_qs)] = upstream.app[SEEN]
    assert seen_method == method and DEMO not in path_qs and "api" not in path_qs
    assert path_qs == "/v1/responses/resp_abc?include%5B%5D=message.output_text.logprobs" or \
        path_qs == "/v1/responses/resp_abc?include[]=message.output_text.logprobs"
