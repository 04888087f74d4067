"""An upstream usage that names the prompt count but NO output count: the output the
client got is not free for that. Before, ``{"prompt_tokens": 3}`` (OpenAI), Anthropic's
``usage`` without ``output_tokens`` (a ``message_delta`` without it: message_start's
placeholder 1 was billed), Gemini's ``usageMetadata`` without ``candidatesTokenCount``
and a Responses ``usage`` without ``output_tokens`` were billed 0 output tokens (1 for
the Anthropic stream) for the 41 that went out.

The rule (``Usage.completion_unknown``): the output count is unknown, so what went out is
counted (text, and tool calls: their names and arguments are output too), billed capped
by the hold and marked estimated; the upstream's prompt count is kept. An answer with no
output at all costs its prompt, as the upstream said it, with 0 output (estimated: the 0
is the gateway's count). Through the real server with the openai and anthropic SDKs, on
each upstream kind, stream and not: the ledger row, what the client was told (the
x-tollway-cost header, the usage in the answer or the stream), and the balance."""

from __future__ import annotations

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from business import DEMO, KINDS, credits, kinds_config, ledger_rows

from plugins.accounts.tokens import count_tokens
from proxy.outputtext import prompt_text

STATE: web.AppKey[dict] = web.AppKey("state")
TEXT = "the answer that went out " * 8
PARTS = [TEXT[:40], TEXT[40:100], TEXT[100:]]
ARGS = '{"city":"Paris","days":3}'  # (compact: as a translation re-serialises it)
PROMPT = 3  # the prompt count every upstream here reports (when it reports one)
OUTPUT = 41  # the output count, when one is reported


def _sse(data: dict | bytes, name: str | None = None) -> bytes:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return (f"event: {name}\n".encode() if name else b"") + b"data: " + raw + b"\n\n"


async def _send(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"".join(events))
    await resp.write_eof()
    return resp


def _shape(request: web.Request) -> str:
    return request.app[STATE]["shape"]  # "text" | "tool" | "empty"


def _no_prompt(request: web.Request) -> bool:
    """The usage names the output count and no prompt count (else the prompt's and no output's)."""
    return request.app[STATE].get("no_prompt", False)


def _said(request: web.Request, usage: dict) -> dict:
    """``usage`` as the upstream puts it in its answer: none at all (``{}``, left out) when the
    test's state says ``no_usage``."""
    return {} if request.app[STATE].get("no_usage") else usage


def _text(shape: str) -> list[str]:
    return PARTS if shape == "text" else [""] if shape == "empty" else []


async def openai_chat(request: web.Request) -> web.StreamResponse:
    body, shape = orjson.loads(await request.read()), _shape(request)
    usage = ({"completion_tokens": OUTPUT, "total_tokens": OUTPUT} if _no_prompt(request)
             else {"prompt_tokens": PROMPT, "total_tokens": PROMPT})
    tool = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ARGS}}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(_text(shape)) if shape != "tool" else None}
        if shape == "tool":
            message["tool_calls"] = [tool]
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                  **_said(request, {"usage": usage}), "choices": [{"index": 0, "message": message,
                                               "finish_reason": "tool_calls" if shape == "tool" else "stop"}]})
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [{"role": "assistant", "content": p} for p in _text(shape)]
    if shape == "tool":
        deltas = [{"role": "assistant", "tool_calls": [{"index": 0, **tool, "function": {"name": "lookup",
                                                                                        "arguments": ARGS[:9]}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": ARGS[9:]}}]}]
    events = [_sse({**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}) for d in deltas]
    events.append(_sse({**head, "choices": [{"index": 0, "delta": {},
                                             "finish_reason": "tool_calls" if shape == "tool" else "stop"}]}))
    if _said(request, {"usage": usage}):
        events.append(_sse({**head, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return await _send(request, events)


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    body, shape = orjson.loads(await request.read()), _shape(request)
    stop = "tool_use" if shape == "tool" else "end_turn"
    if not body.get("stream"):
        content = ([{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": orjson.loads(ARGS)}]
                   if shape == "tool" else [{"type": "text", "text": "".join(_text(shape))}])
        usage = {"output_tokens": OUTPUT} if _no_prompt(request) else {"input_tokens": PROMPT}
        return web.json_response({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                  "content": content, "stop_reason": stop, **_said(request, {"usage": usage})})
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                                  "content": [], "stop_reason": None,
                                                  **_said(request, {"usage": {"output_tokens": 1} if _no_prompt(
                                                      request) else {"input_tokens": PROMPT, "output_tokens": 1}})}}
    events = [_sse(start, "message_start")]
    if shape == "tool":
        events.append(_sse({"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}}, "content_block_start"))
        events += [_sse({"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": p}}, "content_block_delta") for p in (ARGS[:9], ARGS[9:])]
    else:
        events.append(_sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                           "content_block_start"))
        events += [_sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
                        "content_block_delta") for p in _text(shape)]
    events.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    # message_delta's usage without output_tokens (only its input count, as some servers echo it)
    usage = {"output_tokens": OUTPUT} if _no_prompt(request) else {"input_tokens": PROMPT}
    events.append(_sse({"type": "message_delta", "delta": {"stop_reason": stop}, **_said(request, {"usage": usage})},
                       "message_delta"))
    events.append(_sse({"type": "message_stop"}, "message_stop"))
    return await _send(request, events)


async def gemini_generate(request: web.Request) -> web.StreamResponse:
    await request.read()
    shape = _shape(request)
    meta = ({"candidatesTokenCount": OUTPUT, "totalTokenCount": OUTPUT} if _no_prompt(request)
            else {"promptTokenCount": PROMPT, "totalTokenCount": PROMPT})
    parts = ([{"functionCall": {"name": "lookup", "args": orjson.loads(ARGS)}}] if shape == "tool"
             else [{"text": p} for p in _text(shape)])
    said = _said(request, {"usageMetadata": meta})
    if request.match_info["target"].endswith(":generateContent"):
        return web.json_response({"candidates": [{"content": {"role": "model", "parts": parts},
                                                  "finishReason": "STOP"}], **said})
    events = [_sse({"candidates": [{"content": {"role": "model", "parts": [p]}}], **said}) for p in parts[:-1]]
    events.append(_sse({"candidates": [{"content": {"role": "model", "parts": parts[-1:]}, "finishReason": "STOP"}],
                        **said}))
    return await _send(request, events)


async def openai_responses(request: web.Request) -> web.StreamResponse:
    body, shape = orjson.loads(await request.read()), _shape(request)
    if shape == "tool":
        item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup", "arguments": ARGS,
                "status": "completed"}
    else:
        item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "".join(_text(shape)), "annotations": []}]}
    final = {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "m",
             "output": [item], **_said(request, {"usage": {"output_tokens": OUTPUT, "total_tokens": OUTPUT}
                                                  if _no_prompt(request) else {"input_tokens": PROMPT,
                                                                               "total_tokens": PROMPT}})}
    if not body.get("stream"):
        return web.json_response(final)
    if shape == "tool":
        events = [_sse({"type": "response.output_item.added", "output_index": 0, "sequence_number": 0,
                        "item": {**item, "arguments": "", "status": "in_progress"}}, "response.output_item.added")]
        events += [_sse({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0,
                         "delta": p, "sequence_number": i + 1}, "response.function_call_arguments.delta")
                   for i, p in enumerate((ARGS[:9], ARGS[9:]))]
    else:
        events = [_sse({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                        "content_index": 0, "delta": p, "sequence_number": i}, "response.output_text.delta")
                  for i, p in enumerate(_text(shape))]
    events.append(_sse({"type": "response.completed", "sequence_number": 9, "response": final}, "response.completed"))
    return await _send(request, events)


@pytest.fixture
async def upstream(serve_upstream):
    app = web.Application()
    app[STATE] = {"shape": "text"}
    return await serve_upstream({"POST /v1/chat/completions": openai_chat, "POST /v1/messages": anthropic_messages,
                                 "POST /v1/responses": openai_responses,
                                 "POST /v1beta/models/{target}": gemini_generate}, app)




@pytest.fixture
async def running(start_gateway, upstream):
    return await start_gateway(kinds_config(upstream))


QUESTION = "where should I go?"
MESSAGES = [{"role": "user", "content": QUESTION}]
OPENAI_TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]
ANTHROPIC_TOOLS = [{"name": "lookup", "input_schema": OPENAI_TOOLS[0]["function"]["parameters"]}]


async def ask_chat(running, model: str, stream: bool, tools: bool) -> tuple[int, dict]:
    """/v1/chat/completions with the openai SDK: (micro-USD told, usage told)."""
    extra = {"tools": OPENAI_TOOLS} if tools else {}
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        if not stream:
            raw = await client.chat.completions.with_raw_response.create(model=model, max_tokens=500,
                                                                         messages=MESSAGES, **extra)
            usage = raw.parse().usage.model_dump()
            assert round(float(raw.headers["x-tollway-cost"]) * 1e6) == round(usage["cost"] * 1e6)
            return round(usage["cost"] * 1e6), usage
        chunks = [c async for c in await client.chat.completions.create(
            model=model, max_tokens=500, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
            **extra)]
    [usage] = [c.usage.model_dump() for c in chunks if c.usage is not None]
    return round(usage["cost"] * 1e6), usage


async def ask_messages(running, model: str, stream: bool, tools: bool) -> tuple[int, dict]:
    """/v1/messages with the anthropic SDK: (micro-USD told, usage told, as prompt/completion_tokens)."""
    extra = {"tools": ANTHROPIC_TOOLS} if tools else {}
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0) as client:
        if not stream:
            raw = await client.messages.with_raw_response.create(model=model, max_tokens=500, messages=MESSAGES,
                                                                 **extra)
            usage = (await raw.parse()).usage.model_dump()
            assert round(float(raw.headers["x-tollway-cost"]) * 1e6) == round(usage["cost"] * 1e6)
        else:
            events = [e async for e in await client.messages.create(model=model, max_tokens=500, messages=MESSAGES,
                                                                     stream=True, **extra)]
            assert events[-1].type == "message_stop"
            [usage] = [e.usage.model_dump() for e in events if e.type == "message_delta"]
    usage |= {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"]}
    return round(usage["cost"] * 1e6), usage


async def ask_responses(running, model: str, stream: bool, tools: bool) -> tuple[int, dict]:
    """/v1/responses with the openai SDK: (micro-USD told, usage told, as prompt/completion_tokens)."""
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        if not stream:
            raw = await client.responses.with_raw_response.create(model=model, input=QUESTION,
                                                                  max_output_tokens=500)
            usage = raw.parse().usage.model_dump()
            assert round(float(raw.headers["x-tollway-cost"]) * 1e6) == round(usage["cost"] * 1e6)
        else:
            events = [e async for e in await client.responses.create(model=model, input=QUESTION,
                                                                      max_output_tokens=500, stream=True)]
            assert events[-1].type == "response.completed"
            usage = events[-1].response.usage.model_dump()
    usage |= {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"]}
    return round(usage["cost"] * 1e6), usage


ASK = {"chat": ask_chat, "messages": ask_messages, "responses": ask_responses}
CASES = [pytest.param(kind, client, id=f"{kind}-to-{client}") for kind in KINDS for client in ("chat", "messages")]
CASES.append(pytest.param("openai", "responses", id="responses-to-responses"))


async def check(running, told: int, usage: dict, completion: int) -> None:
    """The one row: estimated, the upstream's prompt kept, ``completion`` output tokens;
    ledger == told (cost and counts) == money taken."""
    [row] = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
    assert row == {"prompt": PROMPT, "completion": completion, "cost": PROMPT + 2 * completion, "estimated": 1}
    assert told == row["cost"] and usage["estimated"] is True, usage
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (PROMPT, completion), usage
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, DEMO)
    assert got["spent_micro_usd"] == told and got["balance_micro_usd"] == 5_000_000 - told
    assert got["reserved_micro_usd"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("kind", "client"), CASES)
async def test_text_without_an_output_count_is_counted_and_billed(running, kind, client, stream):
    told, usage = await ASK[client](running, kind, stream, False)
    await check(running, told, usage, await count_tokens(TEXT))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("kind", "client"), CASES)
async def test_a_tool_call_without_an_output_count_is_counted_and_billed(running, upstream, kind, client, stream):
    """A tool call is output: its name and arguments are counted (before: 0 output tokens)."""
    upstream.app[STATE]["shape"] = "tool"
    told, usage = await ASK[client](running, kind, stream, True)
    [row] = await ledger_rows(running, "completion")
    assert row["completion"] >= await count_tokens(ARGS), row
    await check(running, told, usage, row["completion"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("kind", "client"), CASES)
async def test_an_empty_answer_without_an_output_count_costs_its_prompt(running, upstream, kind, client, stream):
    """Nothing went out: the upstream's prompt count is billed, 0 output, marked estimated."""
    upstream.app[STATE]["shape"] = "empty"
    told, usage = await ASK[client](running, kind, stream, False)
    await check(running, told, usage, 0)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("kind", "client"), CASES)
async def test_an_output_count_without_a_prompt_count_bills_the_counted_prompt(running, upstream, kind, client,
                                                                              stream):
    """The other way round (before: the prompt billed 0 tokens): the upstream's output count
    is kept and the request's prompt is counted (its text, as for unknown usage), estimated."""
    upstream.app[STATE]["no_prompt"] = True
    told, usage = await ASK[client](running, kind, stream, False)
    [row] = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
    assert row["prompt"] == await count_tokens(prompt_text(
        {"input": QUESTION} if client == "responses" else {"messages": MESSAGES})), row
    assert row == {"prompt": row["prompt"], "completion": OUTPUT, "cost": row["prompt"] + 2 * OUTPUT, "estimated": 1}
    assert told == row["cost"] and usage["estimated"] is True, usage
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (row["prompt"], OUTPUT), usage
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, DEMO)
    assert got["spent_micro_usd"] == told and got["balance_micro_usd"] == 5_000_000 - told
