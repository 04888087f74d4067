"""A hostile or broken upstream's usage, through the real server with the business
plugins, on each upstream kind (OpenAI, Anthropic, Gemini), streamed and not.

One rule for every token count an upstream reports (``proxy.call.token_count``): a
JSON integer (a float without a fraction) from 0 to ``Usage.MAX_TOKENS``. Anything
else (a string, a boolean, a fraction, a negative or absurd number) makes the usage
unknown: the output that went out is counted, billed, marked estimated and told,
as for a cut stream. Checked each time: the charge is >= 0 and within the hold, the
balance >= 0, and the ledger == the money taken == what the client was told (cost
and tokens)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from aiohttp import web
from business import DEMO, KINDS, bearer, credits, kinds_config, ledger_rows

from plugins.accounts.tokens import count_tokens

STATE: web.AppKey[dict] = web.AppKey("state")
TEXT = "the answer that went out " * 8
PARTS = [TEXT[:40], TEXT[40:100], TEXT[100:]]


def _sse(data: bytes, name: bytes | None = None) -> bytes:
    return (b"event: " + name + b"\n" if name else b"") + b"data: " + data + b"\n\n"


async def _stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        await resp.write(event)
    await resp.write_eof()
    return resp


def _reports(request: web.Request) -> list[str]:
    """The usage reports the test asked for: each the JSON text of one count (the output's)."""
    return request.app[STATE]["reports"]


async def openai_chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    reports = _reports(request)
    state = request.app[STATE]
    usage = [b'{"prompt_tokens":3,"completion_tokens":' + r.encode() + b',"total_tokens":9}' for r in reports]
    usage = [state["raw"]] if "raw" in state else usage
    if not body.get("stream"):
        return web.Response(content_type="application/json", body=b'{"id":"c","object":"chat.completion",'
                            b'"created":1,"model":"m","choices":[{"index":0,"finish_reason":"stop",'
                            b'"message":{"role":"assistant","content":' + orjson.dumps(TEXT) + b'}}],'
                            b'"usage":' + usage[-1] + b'}')
    head = b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    events = [_sse(head + b'"choices":[{"index":0,"delta":{"content":' + orjson.dumps(p) + b'},'
                   b'"finish_reason":null}]}') for p in PARTS]
    events.append(_sse(head + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'))
    usage_events = [_sse(head + b'"choices":[],"usage":' + u + b'}') for u in usage]
    if state.get("after_done"):  # a usage chunk after the stream's end
        events += [b"data: [DONE]\n\n", *usage_events]
        return await _stream(request, events)
    if "release" not in state:
        return await _stream(request, [*events, *usage_events, b"data: [DONE]\n\n"])
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"".join(events))
    await state["release"].wait()  # the usage only once the client has hung up
    for event in [*usage_events, b"data: [DONE]\n\n"]:
        try:
            await resp.write(event)
        except ConnectionError:
            break
    return resp


async def openai_embeddings(request: web.Request) -> web.Response:
    await request.read()
    usage = request.app[STATE]["raw"]
    return web.Response(content_type="application/json", body=b'{"object":"list","model":"m","data":[{"object":'
                        b'"embedding","index":0,"embedding":[0.5,0.25]}]' + (b',"usage":' + usage if usage else b"")
                        + b'}')


async def openai_responses(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    usage = b'{"input_tokens":3,"output_tokens":' + _reports(request)[-1].encode() + b',"total_tokens":9}'
    final = (b'{"id":"resp_1","object":"response","status":"completed","model":"m","output":[{"type":"message",'
             b'"id":"msg_1","role":"assistant","status":"completed","content":[{"type":"output_text","text":'
             + orjson.dumps(TEXT) + b',"annotations":[]}]}],"usage":' + usage + b'}')
    if not body.get("stream"):
        return web.Response(content_type="application/json", body=final)
    events = [_sse(orjson.dumps({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                                 "content_index": 0, "delta": p, "sequence_number": i}),
                   b"response.output_text.delta") for i, p in enumerate(PARTS)]
    events.append(_sse(b'{"type":"response.completed","sequence_number":3,"response":' + final + b'}',
                       b"response.completed"))
    return await _stream(request, events)


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    reports = _reports(request)
    if not body.get("stream"):
        return web.Response(content_type="application/json", body=b'{"id":"msg_1","type":"message",'
                            b'"role":"assistant","model":"m","stop_reason":"end_turn","content":[{"type":"text",'
                            b'"text":' + orjson.dumps(TEXT) + b'}],"usage":{"input_tokens":3,"output_tokens":'
                            + reports[-1].encode() + b'}}')
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                  "model": "m", "content": [], "stop_reason": None,
                                                  "usage": {"input_tokens": 3, "output_tokens": 1}}}
    events = [_sse(orjson.dumps(start), b"message_start"),
              _sse(b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
                   b"content_block_start")]
    events += [_sse(orjson.dumps({"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": p}}), b"content_block_delta")
               for p in PARTS]
    events.append(_sse(b'{"type":"content_block_stop","index":0}', b"content_block_stop"))
    events += [_sse(b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":'
                    + r.encode() + b'}}', b"message_delta") for r in reports]
    events.append(_sse(b'{"type":"message_stop"}', b"message_stop"))
    return await _stream(request, events)


async def gemini_generate(request: web.Request) -> web.StreamResponse:
    await request.read()
    reports = _reports(request)
    meta = [b'{"promptTokenCount":3,"candidatesTokenCount":' + r.encode() + b'}' for r in reports]
    if request.match_info["target"].endswith(":generateContent"):
        return web.Response(content_type="application/json", body=b'{"candidates":[{"content":{"role":"model",'
                            b'"parts":[{"text":' + orjson.dumps(TEXT) + b'}]},"finishReason":"STOP"}],'
                            b'"usageMetadata":' + meta[-1] + b'}')
    events = [_sse(b'{"candidates":[{"content":{"role":"model","parts":[{"text":' + orjson.dumps(p) + b'}]}}]}')
              for p in PARTS[:-1]]
    # Gemini repeats its usage as running totals; the last report is the one that counts.
    for i, m in enumerate(meta):
        last = i == len(meta) - 1
        events.append(_sse(b'{"candidates":[{"content":{"role":"model","parts":[{"text":'
                           + orjson.dumps(PARTS[-1] if last else "") + b'}]}' + (b',"finishReason":"STOP"'
                                                                                  if last else b"")
                           + b'}],"usageMetadata":' + m + b'}'))
    return await _stream(request, events)


@pytest.fixture
async def upstream(serve_upstream):
    app = web.Application()
    app[STATE] = {"reports": ["4"]}
    return await serve_upstream({"POST /v1/chat/completions": openai_chat, "POST /v1/embeddings": openai_embeddings,
                                 "POST /v1/messages": anthropic_messages, "POST /v1/responses": openai_responses,
                                 "POST /v1beta/models/{target}": gemini_generate}, app)




@pytest.fixture
async def running(start_gateway, upstream):
    return await start_gateway(kinds_config(upstream))


async def ask(s: aiohttp.ClientSession, running, model: str, stream: bool) -> tuple[int, dict | None]:
    """A chat call with max_tokens 500: (cost told in micro-USD, usage told or None)."""
    body = {"model": model, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with s.post(running.url + "/chat/completions", json=body, headers=bearer(DEMO)) as r:
        raw = await r.read()
        assert r.status == 200, raw
    if not stream:
        told = orjson.loads(raw)["usage"]
        assert round(float(r.headers["x-tollway-cost"]) * 1e6) == round(told["cost"] * 1e6)
        return round(told["cost"] * 1e6), told
    chunks = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    assert raw.rstrip().endswith(b"data: [DONE]"), raw
    assert not any("error" in c for c in chunks), raw
    usages = [c["usage"] for c in chunks if c.get("usage")]
    assert len(usages) <= 1, usages
    return (round(usages[0]["cost"] * 1e6), usages[0]) if usages else (0, None)


BAD = [pytest.param(v, id=v) for v in ("-5", "7.5", '"7"', "null", "true", "1e30", str(2**63), "{}", "[4]")]


async def check_estimated(s, running, told: int, usage: dict | None) -> None:
    """The one answer's row: estimated, its output counted; told == ledger == money taken."""
    [row] = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
    assert row["estimated"] == 1 and row["completion"] == await count_tokens(TEXT), row
    assert 0 <= row["cost"] == told == row["prompt"] + 2 * row["completion"]
    assert usage is not None and usage.get("estimated") is True, usage
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (row["prompt"], row["completion"])
    got = await credits(s, running, DEMO)
    assert got["spent_micro_usd"] == told and got["balance_micro_usd"] == 5_000_000 - told


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", KINDS)
async def test_an_unusable_count_is_unknown_usage_counted_and_told(running, upstream, kind, stream, value):
    upstream.app[STATE]["reports"] = [value]
    async with aiohttp.ClientSession() as s:
        told, usage = await ask(s, running, kind, stream)
        await check_estimated(s, running, told, usage)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_usable_count_is_billed_as_told(running, upstream, kind, stream):
    """The control: integers (and an integral float) are the upstream's word."""
    upstream.app[STATE]["reports"] = ["40.0"]
    async with aiohttp.ClientSession() as s:
        told, usage = await ask(s, running, kind, stream)
        got = await credits(s, running, DEMO)
    [row] = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
    assert (row["prompt"], row["completion"], row["estimated"]) == (3, 40, 0)
    assert row["cost"] == told == 3 + 80 == got["spent_micro_usd"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 40)



@pytest.mark.parametrize(("reports", "billed"), [
    pytest.param(["1", "-5"], None, id="usable-then-unusable"),
    pytest.param(["1", "null"], None, id="usable-then-null"),
    pytest.param(["40", "40"], 40, id="repeated"),
    pytest.param(["1", "40"], 40, id="running-total")])
@pytest.mark.parametrize("kind", KINDS)
async def test_the_last_usage_report_of_a_stream_counts(running, upstream, kind, reports, billed):
    """A stream that reports its usage more than once (Gemini's running totals, Anthropic's
    message_start then message_delta, an OpenAI server's usage in more than one chunk) is billed
    by its last report, once; when that one is unusable the usage is unknown (it was billed the
    earlier report: 1 token for the 41 that went out)."""
    upstream.app[STATE]["reports"] = reports
    async with aiohttp.ClientSession() as s:
        told, usage = await ask(s, running, kind, True)
        if billed is None:
            await check_estimated(s, running, told, usage)
            return
        got = await credits(s, running, DEMO)
    [row] = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
    assert (row["prompt"], row["completion"], row["estimated"]) == (3, billed, 0)
    assert row["cost"] == told == 3 + 2 * billed == got["spent_micro_usd"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, billed)


async def test_usage_after_the_end_of_a_stream_is_not_read(running, upstream):
    """OpenAI's stream ends at data: [DONE]; a usage chunk after it is not read (the gateway
    stops there): the usage is unknown, counted and told."""
    upstream.app[STATE].update(reports=["1"], after_done=True)
    async with aiohttp.ClientSession() as s:
        told, usage = await ask(s, running, "openai", True)
        await check_estimated(s, running, told, usage)


async def test_usage_sent_after_the_client_hung_up_is_billed(running, upstream):
    """The client leaves after the text; the upstream sends its usage afterwards: the gateway
    reads on (bounded) and bills the upstream's usage, not an estimate and not nothing."""
    release = upstream.app[STATE]["release"] = asyncio.Event()
    upstream.app[STATE]["reports"] = ["40"]
    body = {"model": "openai", "max_tokens": 500, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/chat/completions", json=body, headers=bearer(DEMO)) as r:
            assert r.status == 200
            await r.content.readuntil(b"\n\n")
            r.close()
        release.set()
        for _ in range(400):  # the row is written when the gateway has read the end
            rows = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
            if rows:
                break
            await asyncio.sleep(0.025)
        got = await credits(s, running, DEMO)
    assert rows == [{"prompt": 3, "completion": 40, "cost": 83, "estimated": 0}]
    assert got["spent_micro_usd"] == 83 and got["balance_micro_usd"] == 5_000_000 - 83


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_cached_above_the_prompt_and_reasoning_above_the_output_cost_what_the_counts_bound(
        start_gateway, upstream, stream):
    """Held before: cached tokens above the prompt are billed as a prompt all cached (never a
    negative uncached part, which at a cached price below the input price would make the
    charge negative: (10 - 500) x 1 + 500 x 0.5 + 40 x 2 = -160); reasoning tokens are part of
    the output, priced as it, so more of them than the output changes nothing."""
    upstream.app[STATE]["raw"] = (b'{"prompt_tokens":10,"completion_tokens":40,"prompt_tokens_details":'
                                  b'{"cached_tokens":500},"completion_tokens_details":{"reasoning_tokens":900}}')
    running = await start_gateway(kinds_config(upstream, {"input": 1.0, "output": 2.0, "cached_input": 0.5}))
    async with aiohttp.ClientSession() as s:
        told, usage = await ask(s, running, "openai", stream)
        got = await credits(s, running, DEMO)
    [row] = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
    assert row == {"prompt": 10, "completion": 40, "cost": 5 + 80, "estimated": 0}
    assert told == 85 == got["spent_micro_usd"] and got["balance_micro_usd"] == 5_000_000 - 85


EMBEDDED = "some words the upstream embedded for the caller"


USABLE = b'{"prompt_tokens":12,"total_tokens":12}'


@pytest.mark.parametrize("usage", [b"", b'{"prompt_tokens":"12","total_tokens":12}', b'{"prompt_tokens":-1}',
                                   b'{"prompt_tokens":null,"total_tokens":null}', USABLE],
                         ids=["none", "string", "negative", "null", "usable"])
async def test_embeddings_without_usable_usage_cost_their_hold(running, upstream, usage):
    """Embeddings have no output to count: an answer whose usage is not usage costs its hold,
    as one without usage did (the documented rule for usage nobody can count: the prompt bound,
    a token a byte of the body, at $1 per 1M tokens), told in x-tollway-cost ("12" was billed
    12 tokens)."""
    upstream.app[STATE]["raw"] = usage
    raw = orjson.dumps({"model": "openai", "input": [EMBEDDED, [1, 2, 3]]})
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/embeddings", data=raw,
                          headers={**bearer(DEMO), "Content-Type": "application/json"}) as r:
            body = await r.json()
            assert r.status == 200, body
            told = round(float(r.headers["x-tollway-cost"]) * 1e6)
        got = await credits(s, running, DEMO)
    [row] = await ledger_rows(running, "prompt", "completion", "cost")
    cost = 12 if usage == USABLE else len(raw)
    assert row == {"prompt": 12 if usage == USABLE else 0, "completion": 0, "cost": cost}
    assert told == cost == got["spent_micro_usd"] and got["balance_micro_usd"] == 5_000_000 - cost


async def ask_anthropic(s: aiohttp.ClientSession, running, stream: bool) -> tuple[int, dict]:
    """A /v1/messages call to the Anthropic upstream (a passthrough): (cost told, usage told)."""
    body = {"model": "anthropic", "max_tokens": 500, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    async with s.post(running.url + "/messages", json=body, headers={"x-api-key": DEMO}) as r:
        raw = await r.read()
        assert r.status == 200, raw
    if not stream:
        usage = orjson.loads(raw)["usage"]
        assert round(float(r.headers["x-tollway-cost"]) * 1e6) == round(usage["cost"] * 1e6)
        return round(usage["cost"] * 1e6), usage
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1]["type"] == "message_stop", raw
    [usage] = [e["usage"] for e in events if e["type"] == "message_delta"]
    return round(usage["cost"] * 1e6), usage


@pytest.mark.parametrize("value", ["-5", '"7"', "null", "1e30"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_an_anthropic_passthrough_tells_the_counts_billed(running, upstream, stream, value):
    """An Anthropic client of an Anthropic upstream gets the upstream's bytes; when their usage
    is unusable, the usage it is told (the answer's, or message_delta's) is the gateway's count
    (it was told the upstream's: output_tokens -5 or 1e30 beside the cost of 41 counted)."""
    upstream.app[STATE]["reports"] = [value]
    async with aiohttp.ClientSession() as s:
        told, usage = await ask_anthropic(s, running, stream)
        got = await credits(s, running, DEMO)
    [row] = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
    assert row["estimated"] == 1 and row["completion"] == await count_tokens(TEXT), row
    assert 0 <= row["cost"] == told == row["prompt"] + 2 * row["completion"] == got["spent_micro_usd"]
    assert usage["estimated"] is True
    assert (usage["input_tokens"], usage["output_tokens"]) == (row["prompt"], row["completion"]), usage


@pytest.mark.parametrize("value", ["-5", '"7"', "null", "7.5"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_responses_passthrough_tells_the_counts_billed(running, upstream, stream, value):
    """/v1/responses passed through: an unusable count is unknown usage, counted and told in
    the answer's (or the terminal event's) usage ("7" was billed 7 tokens, 7.5 too)."""
    upstream.app[STATE]["reports"] = [value]
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/responses", json={"model": "openai", "input": "hi", "stream": stream,
                                                           "max_output_tokens": 500}, headers=bearer(DEMO)) as r:
            raw = await r.read()
            assert r.status == 200, raw
        if stream:
            usage = orjson.loads(raw.rstrip().rpartition(b"\ndata: ")[2])["response"]["usage"]
        else:
            usage = orjson.loads(raw)["usage"]
        got = await credits(s, running, DEMO)
    [row] = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
    assert row["estimated"] == 1 and row["completion"] == await count_tokens(TEXT), row
    assert 0 <= row["cost"] == round(usage["cost"] * 1e6) == row["prompt"] + 2 * row["completion"]
    assert row["cost"] == got["spent_micro_usd"] and usage["estimated"] is True
    assert (usage["input_tokens"], usage["output_tokens"]) == (row["prompt"], row["completion"]), usage


@pytest.mark.parametrize("value", ["NaN", "-Infinity"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_count_that_is_not_json_fails_a_whole_answer_free(running, upstream, kind, value):
    """Held before: NaN or Infinity (Python's JSON-ish text) make the body invalid JSON: 502, nothing taken."""
    upstream.app[STATE]["reports"] = [value]
    body = {"model": kind, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/chat/completions", json=body, headers=bearer(DEMO)) as r:
            assert r.status == 502 and (await r.json())["error"]["code"] == "upstream_bad_response"
        got = await credits(s, running, DEMO)
    assert (got["spent_micro_usd"], got["balance_micro_usd"]) == (0, 5_000_000)
    assert await ledger_rows(running, "cost", "error_code") == [{"cost": 0, "error_code": "upstream_bad_response"}]


@pytest.mark.parametrize("value", ["NaN", "-Infinity"])
@pytest.mark.parametrize("client", ["openai", "anthropic-translated", "anthropic-passthrough"])
async def test_a_usage_report_that_is_not_json_makes_a_stream_usage_unknown(running, upstream, client, value):
    """A stream's last usage report that cannot be parsed is unknown usage: counted and told.
    It was skipped: from Anthropic, message_start's output_tokens (1) billed for the 41 that went
    out; an OpenAI client of an OpenAI upstream got the unparseable chunk beside the gateway's."""
    upstream.app[STATE]["reports"] = [value]
    async with aiohttp.ClientSession() as s:
        if client == "anthropic-passthrough":
            told, usage = await ask_anthropic(s, running, True)
            usage = {**usage, "prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"]}
        else:
            told, usage = await ask(s, running, client.partition("-")[0], True)
        await check_estimated(s, running, told, usage)
