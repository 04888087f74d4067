"""A COMPLETE answer whose upstream said nothing of its usage and gave no output (empty
content, no tool call) still cost the operator its prompt: the upstream read it and billed
it. Before, such an answer was free (``counted_usage`` found no output and returned None:
no cost told, nothing charged, a ledger row of 0). Now the gateway counts the request's
prompt with the tokenizer and bills it, capped by the reservation, marked estimated.

The rule is what the upstream did: it FINISHED its answer (a whole non-stream answer was
read, a stream reached its end event) -> the prompt is billed. It failed (an error status)
or its stream was cut before any output -> free, as before. Through the real server with
the official SDKs, on each upstream kind, stream and not: the ledger row, what the client
was told (x-tollway-cost, usage) and the balance."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from business import DEMO, bearer, biz_config, credits, ledger_rows
from test_hostile_upstream_usage_output import (  # noqa: F401  (the fixtures: an upstream of each kind, the gateway)
    ASK,
    CASES,
    MESSAGES,
    QUESTION,
    STATE,
    running,
    upstream,
)

from plugins.accounts.tokens import count_tokens
from proxy.outputtext import prompt_text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("kind", "client"), CASES)
async def test_a_complete_answer_without_usage_or_output_bills_the_counted_prompt(
        running, upstream, kind, client, stream):  # noqa: F811
    upstream.app[STATE].update(shape="empty", no_usage=True)
    told, usage = await ASK[client](running, kind, stream, False)
    prompt = await count_tokens(prompt_text({"input": QUESTION} if client == "responses" else {"messages": MESSAGES}))
    assert prompt > 0
    [row] = await ledger_rows(running, "status", "prompt", "completion", "cost", "estimated")
    assert row == {"status": 200, "prompt": prompt, "completion": 0, "cost": prompt * 1, "estimated": 1}
    assert told == row["cost"] and usage["estimated"] is True, usage
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 0), usage
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, DEMO)
    assert got["spent_micro_usd"] == told and got["balance_micro_usd"] == 5_000_000 - told
    assert got["reserved_micro_usd"] == 0


async def failing(request: web.Request) -> web.StreamResponse:
    """An OpenAI upstream that fails: a 500 (whole answers), or a stream that sends its
    role chunk (no output) and then dies."""
    body = orjson.loads(await request.read())
    if not body.get("stream"):
        return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    request.transport.abort()
    return resp


@pytest.mark.parametrize("stream", [False, True], ids=["error-status", "stream-cut-before-output"])
async def test_an_upstream_that_failed_before_any_output_stays_free(start_gateway, serve_upstream, stream):
    up = await serve_upstream({"POST /v1/chat/completions": failing})
    gateway = await start_gateway(biz_config(up.url))
    async with openai.AsyncOpenAI(base_url=gateway.url, api_key=DEMO, max_retries=0) as client:
        if not stream:
            with pytest.raises(openai.APIStatusError) as err:
                await client.chat.completions.create(model="up", max_tokens=50, messages=MESSAGES)
            assert err.value.status_code == 502 and "x-tollway-cost" not in err.value.response.headers
        else:
            chunks = []
            with pytest.raises(openai.APIError, match="closed the connection"):
                async for chunk in await client.chat.completions.create(
                        model="up", max_tokens=50, messages=MESSAGES, stream=True,
                        stream_options={"include_usage": True}):
                    chunks.append(chunk)
            assert [c.choices[0].delta.content for c in chunks] == [""] and all(c.usage is None for c in chunks)
    [row] = await ledger_rows(gateway, "status", "error_code", "prompt", "completion", "cost", "estimated")
    assert row["cost"] == 0 and row["estimated"] == 0 and (row["prompt"], row["completion"]) == (0, 0), row
    assert row["error_code"] == ("upstream_disconnected" if stream else "upstream_error"), row
    async with aiohttp.ClientSession() as s:
        got = await credits(s, gateway, DEMO)
    assert got["spent_micro_usd"] == 0 and got["balance_micro_usd"] == 5_000_000 and got["reserved_micro_usd"] == 0


GAP: web.AppKey[float] = web.AppKey("gap")


async def late_and_empty(request: web.Request) -> web.StreamResponse:
    """An OpenAI stream of no output that ends complete, [DONE], without usage: its role chunk
    after 0.3 s, an empty content chunk 0.3 s later (the gateway's write of it finds the client
    gone), then ``GAP`` seconds later its end."""
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    for delay, delta in ((0.3, {"role": "assistant", "content": ""}), (0.3, {"content": ""})):
        await asyncio.sleep(delay)
        await resp.write(b"data: " + orjson.dumps({**head, "choices": [
            {"index": 0, "delta": delta, "finish_reason": None}]}) + b"\n\n")
    await asyncio.sleep(request.app[GAP])
    await resp.write(b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                     + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.mark.parametrize("gap", [0.05, 2.0], ids=["drained-to-its-end", "drain-bound-hit"])
async def test_a_client_gone_before_any_byte_pays_the_prompt_only_if_the_upstream_finished(
        start_gateway, serve_upstream, gap):
    """The client hangs up once it has the headers, before any byte of the body. The gateway
    drains the upstream (``disconnect_drain``: 0.5 s here): when the upstream finishes its empty
    answer within it, it read and billed the prompt, and so is the client, estimated; when the
    drain's bound stops it first, nothing finished and nothing went out: free."""
    app = web.Application()
    app[GAP] = gap
    up = await serve_upstream({"POST /v1/chat/completions": late_and_empty}, app)
    config = biz_config(up.url)
    config["server"]["disconnect_drain"] = {"seconds": 0.5, "max_bytes": 1_000_000}
    config["providers"]["up"]["timeouts"]["idle"] = 5  # (the drain's bound comes first)
    gateway = await start_gateway(config)
    payload = {"model": "up", "stream": True, "max_tokens": 50, "messages": MESSAGES}
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/chat/completions", json=payload, headers=bearer(DEMO)) as r:
            assert r.status == 200
            r.close()  # gone before any byte of the body
        for _ in range(200):  # the gateway's drain ends on its own; the row is queued when it does
            rows = await ledger_rows(gateway, "client_gone", "error_code", "prompt", "completion", "cost",
                                     "estimated")
            if rows:
                break
            await asyncio.sleep(0.05)
        got = await credits(s, gateway, DEMO)
    [row] = rows
    assert row["client_gone"] == 1
    if gap > 0.5:
        assert row["error_code"] == "client_gone_drain_bound"
        assert (row["prompt"], row["completion"], row["cost"], row["estimated"]) == (0, 0, 0, 0), row
    else:
        prompt = await count_tokens(prompt_text({"messages": MESSAGES}))
        assert (row["prompt"], row["completion"], row["cost"], row["estimated"]) == (prompt, 0, prompt, 1), row
    assert got["spent_micro_usd"] == row["cost"] and got["balance_micro_usd"] == 5_000_000 - row["cost"]
