"""Output that went to a client is never free: when a stream ends without the
upstream's usage (cut, a timeout, the client gone with the drain bound hit), the
output that went out is counted with a tokenizer, billed (capped by what was
reserved) and marked as estimated in the ledger; passthrough and translated
streams alike. Through the real server, checked in the ledger and the balance."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from aiohttp import web
from business import DEMO, add_claude, bearer, biz_config, credits, ledger_rows

from plugins.accounts.tokens import count_tokens


async def ledger(running) -> list[dict]:
    return await ledger_rows(running, "status", "error_code", "prompt", "completion", "cost", "estimated")


async def read_stream(s, running, payload) -> str:
    async with s.post(running.url + "/chat/completions", json=payload, headers=bearer(DEMO)) as r:
        assert r.status == 200
        return await r.text()


def streamed_content(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("data: {"):
            chunk = orjson.loads(line[6:])
            for choice in chunk.get("choices") or ():
                out.append((choice.get("delta") or {}).get("content") or "")
    return "".join(out)


async def test_a_stream_cut_by_the_total_timeout_pays_for_what_went_out(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url)
    config["providers"]["up"]["timeouts"] = {"connect": 2, "first_byte": 2, "idle": 2, "total": 1}
    running = await start_gateway(config)
    payload = {"model": "up", "stream": True, "max_tokens": 5000, "messages": [{"role": "user", "content": "go"}],
               "stream_options": {"include_usage": True}, "mock": {"chunks": 400, "chunk_delay": 0.005}}
    async with aiohttp.ClientSession() as s:
        text = await read_stream(s, running, payload)
        got = await credits(s, running, DEMO)
    assert "upstream_timeout_total" in text
    content = streamed_content(text)
    assert content  # output went out before the timeout
    [row] = await ledger(running)
    # Counted from what was produced: the tokens of the text the client received.
    assert row["estimated"] == 1 and row["error_code"] == "upstream_timeout_total"
    assert row["completion"] == await count_tokens(content)
    assert row["cost"] == row["prompt"] * 1 + row["completion"] * 2 > 0
    assert got["spent_micro_usd"] == row["cost"] == 5_000_000 - got["balance_micro_usd"]
    assert got["reserved_micro_usd"] == 0


async def test_an_upstream_without_usage_is_billed_on_the_count_and_the_client_is_told(start_gateway,
                                                                                       mock_upstream):
    running = await start_gateway(biz_config(mock_upstream.url))
    payload = {"model": "up", "stream": True, "max_tokens": 5000, "messages": [{"role": "user", "content": "go"}],
               "stream_options": {"include_usage": True}, "mock": {"chunks": 20}}
    async with aiohttp.ClientSession() as s:
        # An upstream that ignores stream_options: a complete stream, [DONE], and no usage.
        payload["mock"]["no_done"] = True
        text = await read_stream(s, running, payload)
    assert "upstream_stream_cut" in text  # no usage and no [DONE]: cut
    [row] = await ledger(running)
    assert row["estimated"] == 1 and row["completion"] == await count_tokens(streamed_content(text))


ANTHROPIC_EVENTS = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
] + [("content_block_delta", {"type": "content_block_delta", "index": 0,
                              "delta": {"type": "text_delta", "text": f"word{i} and more "}}) for i in range(40)]


async def cut_anthropic(request: web.Request) -> web.StreamResponse:
    """An Anthropic upstream that streams 40 text deltas, then dies before message_delta."""
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for name, data in ANTHROPIC_EVENTS:
        await resp.write(f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")
    await asyncio.sleep(0.05)
    request.transport.abort()
    return resp


async def test_a_translated_stream_cut_mid_way_pays_for_what_went_out(start_gateway, serve_upstream):
    upstream = await serve_upstream({"POST /v1/messages": cut_anthropic})
    running = await start_gateway(add_claude(biz_config(), upstream.root))
    payload = {"model": "claude", "stream": True, "max_tokens": 1000, "messages": [{"role": "user", "content": "go"}]}
    async with aiohttp.ClientSession() as s:
        text = await read_stream(s, running, payload)
        got = await credits(s, running, DEMO)
    content = streamed_content(text)
    assert content.startswith("word0 and more ") and "word39" in content and '"error"' in text
    [row] = await ledger(running)
    # The prompt is the upstream's own count (message_start); the output is counted.
    assert row["estimated"] == 1 and row["prompt"] == 25
    assert row["completion"] == await count_tokens(content)
    assert row["cost"] == -(-(25 * 3 + row["completion"] * 15) // 1) and row["cost"] > 0
    assert got["spent_micro_usd"] == row["cost"]


def failing_count(*args, **kwargs):
    raise RuntimeError("tokenizer broke")


async def test_a_count_that_fails_still_bills_what_went_out(start_gateway, mock_upstream, monkeypatch):
    """The tokenizer raises (then, the whole count): the output that went out is
    billed on its bytes (four a token), capped by the reservation, marked estimated."""
    import plugins.accounts.estimate
    import plugins.pricing

    running = await start_gateway(biz_config(mock_upstream.url))
    cases = ((plugins.accounts.estimate, 5000), (plugins.accounts.estimate, 40),
             (plugins.pricing, 5000), (plugins.pricing, 40))
    for done, (target, max_tokens) in enumerate(cases):
        name = "count_tokens" if target is plugins.accounts.estimate else "counted_usage"
        monkeypatch.setattr(target, name, failing_count)
        payload = {"model": "up", "stream": True, "max_tokens": max_tokens,
                   "messages": [{"role": "user", "content": "go"}], "stream_options": {"include_usage": True},
                   "mock": {"chunks": 20, "no_done": True}}
        async with aiohttp.ClientSession() as s:
            text = await read_stream(s, running, payload)
            got = await credits(s, running, DEMO)
        monkeypatch.undo()
        assert "upstream_stream_cut" in text and streamed_content(text)
        rows = await ledger(running)
        assert len(rows) == done + 1
        row = rows[-1]
        body_size = len(orjson.dumps(payload))
        reservation = min(body_size, 1000) * 1 + max_tokens * 2  # prompt bound x input + output bound x output
        assert row["estimated"] == 1 and row["error_code"] == "upstream_stream_cut"
        assert 0 < row["completion"] <= max_tokens and 0 < row["prompt"] <= body_size
        assert 0 < row["cost"] == row["prompt"] * 1 + row["completion"] * 2 <= reservation
        if max_tokens == 40:  # 20 chunks are far more than 160 bytes: the cap applies
            assert row["completion"] == 40
        else:  # a byte count: more than the real tokens, never more than the bytes sent
            assert await count_tokens(streamed_content(text)) < row["completion"] <= len(text) // 4 + 1
        assert got["reserved_micro_usd"] == 0
    spent = sum(r["cost"] for r in await ledger(running))
    assert got["spent_micro_usd"] == spent == 5_000_000 - got["balance_micro_usd"]
