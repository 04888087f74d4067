"""A client that hangs up after its request, before the stream's head could be written to it.

The upstream's answer still comes, and the gateway drains it (``server.disconnect_drain``) so that
the request is billed at the upstream's own usage, as for a client that leaves mid-stream. Found
under wrk (benchmarks/wrkcheck.py): connections closed at the end of a run, before their answer's
head, were billed as estimated at the whole reservation (max_tokens: 256 completion tokens for an
answer of 50), the drain's time bound read as already passed."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web
from business import DEMO, bearer, biz_config, ledger_rows
from test_stream_one_read import ANSWERS, DONE, USAGE
from test_usage_null_chunks import EVENTS, ONE_WRITE, upstream_chat

ASKED: web.AppKey[asyncio.Event] = web.AppKey("asked")
GONE: web.AppKey[asyncio.Event] = web.AppKey("gone")


async def answer_once_the_client_left(request: web.Request) -> web.StreamResponse:
    await request.read()
    request.app[ASKED].set()
    await request.app[GONE].wait()
    return await upstream_chat(request)  # the answer (usage: 7 prompt and 40 completion tokens), whole or paced


@pytest.mark.parametrize("one_write", [True, False])
async def test_a_client_gone_before_the_head_is_billed_at_the_upstreams_usage(one_write, start_gateway,
                                                                             serve_upstream):
    app = web.Application()
    app[ASKED], app[GONE] = asyncio.Event(), asyncio.Event()
    app[EVENTS], app[ONE_WRITE] = [*ANSWERS["nulls"], USAGE, DONE], one_write
    up = await serve_upstream({"POST /v1/chat/completions": answer_once_the_client_left}, app)
    gw = await start_gateway(biz_config(up.url))
    body = orjson.dumps({"model": "up", "stream": True, "max_tokens": 256,
                         "messages": [{"role": "user", "content": "hi"}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer(DEMO)['Authorization']}"
                 f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    async with asyncio.timeout(10):
        await app[ASKED].wait()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.3)  # the gateway sees the connection closed before the upstream answers
    app[GONE].set()
    for _ in range(200):
        rows = await ledger_rows(gw, "prompt", "completion", "cost", "estimated", "client_gone", "error_code")
        if rows:
            break
        await asyncio.sleep(0.05)
    assert rows == [{"prompt": 7, "completion": 40, "cost": 7 * 1 + 40 * 2, "estimated": 0, "client_gone": 1,
                     "error_code": None}]
