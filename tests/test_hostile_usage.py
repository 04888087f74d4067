"""An upstream that reports absurd usage (1e300 tokens, a float, a count that does
not fit a ledger column) through the real server: the answer's usage is called
unknown (billed as the gateway counts it), the balance never goes below zero,
and the ledger writer keeps writing (one poisoned row once stopped every later
ledger write: "Python int too large to convert to SQLite INTEGER", retried forever)."""

from __future__ import annotations

import json

import aiohttp
import orjson
import pytest
from aiohttp import web
from business import DEMO, add_claude, bearer, biz_config, credits

from plugins.accounts import ACCOUNTS
from plugins.accounts.tokens import count_tokens

ANSWER: web.AppKey[dict] = web.AppKey("answer")
TEXT = "the answer that went out " * 4


async def answer(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    usage = request.app[ANSWER]["usage"] if body.get("input") != "fine" and body.get("messages", [{}])[0].get(
        "content") != "fine" else None
    if request.path.endswith("/responses"):
        usage = usage or {"input_tokens": 3, "output_tokens": 4}
        final = {"id": "resp_x", "object": "response", "status": "completed", "model": "m", "usage": usage,
                 "output": [{"type": "message", "id": "msg_x", "role": "assistant", "status": "completed",
                             "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}]}
        if not body.get("stream"):
            return web.json_response(final)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for seq, (name, data) in enumerate([
                ("response.output_text.delta", {"item_id": "msg_x", "output_index": 0, "content_index": 0,
                                                "delta": TEXT}),
                ("response.completed", {"response": final})]):
            event = json.dumps({"type": name, **data, "sequence_number": seq}).encode()
            await resp.write(b"event: " + name.encode() + b"\ndata: " + event + b"\n\n")
        await resp.write_eof()
        return resp
    usage = usage or {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "usage": usage,
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": TEXT}}]})


@pytest.fixture
async def upstream(serve_upstream):
    app = web.Application()
    app[ANSWER] = {}
    return await serve_upstream({"POST /v1/responses": answer, "POST /v1/chat/completions": answer}, app)


@pytest.fixture
async def running(start_gateway, upstream):
    return await start_gateway(biz_config(upstream.url))


async def ledger(running) -> list[tuple]:
    await running.gw.services[ACCOUNTS].writer.flush()
    return await running.gw.store.fetchall(
        "select status, prompt_tokens, completion_tokens, cost_micro_usd, estimated from tollway_ledger order by time")


ABSURD = [pytest.param(1e300, id="1e300"), pytest.param(2**70, id="2^70"), pytest.param(10**15, id="1e15")]


@pytest.mark.parametrize("count", ABSURD)
@pytest.mark.parametrize("shape", ["responses", "responses-stream", "chat"])
async def test_absurd_usage_is_unknown_usage_and_the_ledger_keeps_writing(running, upstream, shape, count):
    if shape == "chat":
        upstream.app[ANSWER]["usage"] = {"prompt_tokens": 3, "completion_tokens": count}
        path, ask, fine = "/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, {
            "messages": [{"role": "user", "content": "fine"}]}
    else:
        upstream.app[ANSWER]["usage"] = {"input_tokens": 3, "output_tokens": count}
        path, ask, fine = "/responses", {"input": "hi", "stream": shape.endswith("stream")}, {"input": "fine"}
    told = []
    async with aiohttp.ClientSession() as s:
        for body in (ask, fine):
            async with s.post(running.url + path, json={"model": "up", **body}, headers=bearer(DEMO)) as r:
                assert r.status == 200
                raw = await r.read()
                if r.headers.get("x-tollway-cost"):
                    told.append(round(float(r.headers["x-tollway-cost"]) * 1_000_000))
                else:  # a stream: the cost is in the terminal event's usage
                    last = orjson.loads(raw.rstrip().rpartition(b"\ndata: ")[2])
                    told.append(round(last["response"]["usage"]["cost"] * 1_000_000))
        got = await credits(s, running, DEMO)
    rows = await ledger(running)
    assert len(rows) == 2, rows  # the absurd answer's row and the next one: the writer was not stopped
    absurd, normal = rows
    assert absurd[4] == 1 and 0 < absurd[2] < 1000  # the output that went out, counted, marked estimated
    assert normal[1:3] == (3, 4) and normal[4] == 0
    assert [r[3] for r in rows] == told  # what the client was told == what the ledger holds
    assert got["spent_micro_usd"] == sum(told) and got["balance_micro_usd"] == 5_000_000 - sum(told) >= 0


COMPLETION = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "text": TEXT, "finish_reason": "stop"}]}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
           "content": [{"type": "text", "text": TEXT}]}


@pytest.mark.parametrize("usage", [None, {"prompt_tokens": "many"}, {"input_tokens": -1, "output_tokens": 1e300}])
@pytest.mark.parametrize("path", ["/completions", "/messages"])
async def test_a_passthrough_answer_without_usable_usage_is_counted_and_told(start_gateway, serve_upstream,
                                                                            path, usage):
    """/v1/completions and /v1/messages passed through as they came: with no usage (many
    self-hosted servers send none) the output is counted, billed, marked estimated and told,
    never the whole reservation in silence."""
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        body = dict(COMPLETION if request.path.endswith("/completions") else MESSAGE)
        if usage is not None:
            body["usage"] = usage
        return web.json_response(body)

    server = await serve_upstream({"POST /v1/completions": answer, "POST /v1/messages": answer})
    config = add_claude(biz_config(server.url), server.root, model="m", price={"input": 1.0, "output": 2.0})
    running = await start_gateway(config)
    body = {"model": "up", "prompt": "hi", "max_tokens": 1000} if path == "/completions" else {
        "model": "claude", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + path, json=body, headers={**bearer(DEMO), "x-api-key": DEMO}) as r:
            assert r.status == 200
            told = round(float(r.headers["x-tollway-cost"]) * 1_000_000)
        got = await credits(s, running, DEMO)
    [(status, prompt, completion, cost, estimated)] = await ledger(running)
    assert estimated == 1 and completion == await count_tokens(TEXT)
    assert told == cost == got["spent_micro_usd"] == prompt + 2 * completion
