"""An OpenAI upstream asked for usage sends ``"usage":null`` in every chunk
and the usage object in its last chunk but one (the gateway always asks). Through the server,
the answer in one write and paced: the client gets the upstream's events byte for byte (the
usage event too when it asked for usage, else not), and the usage billed is the object's."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web
from conftest import base_config
from test_dispatch import exchange, post

from proxy import hookimpl

HEAD = b'{"id":"chatcmpl-AbCdEfGh","object":"chat.completion.chunk","created":1,"model":"m",'
CHUNKS = [b"data: " + HEAD + b'"choices":[{"index":0,"delta":{"content":' + orjson.dumps(f" word{i}")
          + b'},"logprobs":null,"finish_reason":null}],"usage":null}\n\n' for i in range(40)]
USAGE_EVENT = (b"data: " + HEAD
               + b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":40,"total_tokens":45}}\n\n')
DONE = b"data: [DONE]\n\n"
ONE_WRITE: web.AppKey[bool] = web.AppKey("one_write")
EVENTS: web.AppKey[list[bytes]] = web.AppKey("events")


class Seen:
    def __init__(self) -> None:
        self.usage: list = []

    @hookimpl
    async def tollway_usage(self, call):
        self.usage.append(call.billing.usage)


async def upstream_chat(request: web.Request) -> web.StreamResponse:
    """An OpenAI upstream answering ``app[EVENTS]``: whole in one write, or an event a write."""
    body = orjson.loads(await request.read())
    assert body["stream_options"]["include_usage"] is True  # (the gateway asks)
    events = request.app[EVENTS]
    if request.app[ONE_WRITE]:
        return web.Response(body=b"".join(events), content_type="text/event-stream")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        await resp.write(event)
        await asyncio.sleep(0.001)
    await resp.write_eof()
    return resp


async def sse_upstream(serve_upstream, events: list[bytes], one_write: bool):
    app = web.Application()
    app[EVENTS], app[ONE_WRITE] = events, one_write
    return await serve_upstream({"POST /v1/chat/completions": upstream_chat}, app)


@pytest.mark.parametrize("one_write", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
async def test_null_usage_in_every_chunk_passes_and_the_object_is_billed(one_write, include_usage, start_gateway,
                                                                         serve_upstream):
    upstream = await sse_upstream(serve_upstream, [*CHUNKS, USAGE_EVENT, DONE], one_write)
    seen = Seen()
    gw = await start_gateway(base_config(upstream.url), plugins=(seen,))
    request = {"model": "up", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if include_usage:
        request["stream_options"] = {"include_usage": True}
    body = orjson.dumps(request)
    answer, _ = await exchange(gw.server.port, post("/v1/chat/completions", body))
    cut = answer.index(b"\r\n\r\n") + 4
    head, data = answer[:cut], answer[cut:]  # (exchange's answer holds the chunks' data, not their sizes)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data == b"".join([*CHUNKS, *([USAGE_EVENT] if include_usage else []), DONE])
    assert [(u.prompt_tokens, u.completion_tokens) for u in seen.usage] == [(5, 40)]
