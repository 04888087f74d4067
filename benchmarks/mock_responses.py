"""The mock upstream's Responses API and legacy completions (``/v1/responses``,
``/v1/completions``), deterministic, with usage, in OpenAI's shapes.

Knobs in the body's ``"mock"`` object (as for chat): ``chunks``, ``chunk_size``,
``chunk_delay``, ``status``; for responses also ``terminal`` (``completed``,
``incomplete`` or ``failed``: the terminal event and status), ``tool`` (answer
with a call of the first function tool), ``drop_after`` (events, then the
connection drops), ``error_after`` (events, then the upstream's own ``error`` event and
the end), ``no_usage`` (a terminal event whose usage is null).
Stored responses can be read back (``GET``) and deleted (``DELETE``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import orjson
from aiohttp import web

from proxy.sse import DONE_EVENT, data_event, named_event

STORE_KEY: web.AppKey[dict] = web.AppKey("mock_responses_store")


def _text(chunks: int, size: int) -> list[str]:
    return [(f"tok{i} " * (size // 5 + 1))[:size] for i in range(chunks)]


def _prompt_tokens(body: dict) -> int:
    return max(1, len(orjson.dumps([body.get("instructions"), body.get("input")])) // 16)


def _response(body: dict, rid: str, status: str, output: list, usage: dict | None) -> dict:
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "model": body.get("model", "mock"), "output": output, "usage": usage, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "parallel_tool_calls": True, "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "temperature": 1.0, "top_p": 1.0, "metadata": {},
            "previous_response_id": body.get("previous_response_id"), "store": body.get("store", True)}


def _events(body: dict, knobs: dict) -> tuple[list[tuple[str, dict]], dict]:
    """The stream's events (name, data without sequence numbers) and the final response."""
    chunks, size = int(knobs.get("chunks", 8)), int(knobs.get("chunk_size", 8))
    rid = "resp_" + hashlib.sha1(orjson.dumps(body.get("input"))).hexdigest()[:24]
    terminal = knobs.get("terminal", "completed")
    status = {"completed": "completed", "incomplete": "incomplete", "failed": "failed"}[terminal]
    pieces = _text(chunks, size)
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    events: list[tuple[str, dict]] = []
    head = _response(body, rid, "in_progress", [], None)
    events.append(("response.created", {"response": head}))
    events.append(("response.in_progress", {"response": head}))
    if knobs.get("tool") and tools:
        args = orjson.dumps({"city": "Paris"}).decode()
        item = {"id": "fc_" + rid[5:], "type": "function_call", "status": "in_progress", "call_id": "call_1",
                "name": tools[0]["name"], "arguments": ""}
        events.append(("response.output_item.added", {"output_index": 0, "item": item}))
        for piece in (args[:5], args[5:]):
            events.append(("response.function_call_arguments.delta",
                           {"item_id": item["id"], "output_index": 0, "delta": piece}))
        events.append(("response.function_call_arguments.done",
                       {"item_id": item["id"], "output_index": 0, "arguments": args}))
        done = {**item, "status": "completed", "arguments": args}
        events.append(("response.output_item.done", {"output_index": 0, "item": done}))
        output_tokens = 7
    else:
        text = "".join(pieces)
        item = {"id": "msg_" + rid[5:], "type": "message", "status": "in_progress", "role": "assistant",
                "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        ids = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        events.append(("response.output_item.added", {"output_index": 0, "item": item}))
        events.append(("response.content_part.added", {**ids, "part": part}))
        events += [("response.output_text.delta", {**ids, "delta": p, "logprobs": []}) for p in pieces]
        events.append(("response.output_text.done", {**ids, "text": text, "logprobs": []}))
        events.append(("response.content_part.done", {**ids, "part": {**part, "text": text}}))
        done = {**item, "status": "completed", "content": [{**part, "text": text}]}
        events.append(("response.output_item.done", {"output_index": 0, "item": done}))
        output_tokens = chunks
    prompt = _prompt_tokens(body)
    usage = None if knobs.get("no_usage") else {
        "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + output_tokens}
    final = _response(body, rid, status, [done], usage)
    if status == "failed":
        final["error"] = {"code": "server_error", "message": "mock failure"}
    events.append((f"response.{terminal}", {"response": final}))
    return events, final


async def responses(request: web.Request) -> web.StreamResponse:
    from .mock_upstream import STATS_KEY, error_body

    body = orjson.loads(await request.read())
    stats = request.app[STATS_KEY]
    stats["requests"] += 1
    stats["last_body"] = body
    knobs = body.get("mock") or {}
    if knobs.get("status"):
        return web.Response(status=knobs["status"], body=error_body(knobs["status"]), content_type="application/json")
    events, final = _events(body, knobs)
    if body.get("store", True):
        request.app[STORE_KEY][final["id"]] = final
    if not body.get("stream"):
        return web.Response(body=orjson.dumps(final), content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    drop_after, delay = knobs.get("drop_after"), float(knobs.get("chunk_delay", 0))
    error_after = knobs.get("error_after")
    for seq, (name, data) in enumerate(events):
        if error_after is not None and seq >= error_after:  # the upstream's own in-band error, then the end
            await resp.write(named_event(b"error", orjson.dumps({
                "type": "error", "code": "server_error", "message": "mock upstream failed mid-stream",
                "param": None, "sequence_number": seq})))
            await resp.write_eof()
            return resp
        if drop_after is not None and seq >= drop_after:
            await asyncio.sleep(0.02)
            request.transport.abort()
            return resp
        if seq and delay:
            await asyncio.sleep(delay)
        await resp.write(named_event(name.encode(), orjson.dumps({"type": name, **data, "sequence_number": seq})))
    await resp.write_eof()
    return resp


async def stored(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    rid = request.match_info["rid"]
    if rid not in store:
        return web.Response(status=404, content_type="application/json", body=orjson.dumps(
            {"error": {"message": f"No response found with id '{rid}'.", "type": "invalid_request_error",
                       "param": None, "code": None}}))
    if request.method == "DELETE":
        del store[rid]
        return web.Response(body=orjson.dumps({"id": rid, "object": "response.deleted", "deleted": True}),
                            content_type="application/json")
    return web.Response(body=orjson.dumps(store[rid]), content_type="application/json")


async def completions(request: web.Request) -> web.StreamResponse:
    from .mock_upstream import STATS_KEY

    body = orjson.loads(await request.read())
    stats = request.app[STATS_KEY]
    stats["requests"] += 1
    stats["last_body"] = body
    knobs = body.get("mock") or {}
    pieces = _text(int(knobs.get("chunks", 8)), int(knobs.get("chunk_size", 8)))
    prompt = max(1, len(orjson.dumps([body.get("prompt"), body.get("suffix")])) // 16)
    usage = {"prompt_tokens": prompt, "completion_tokens": len(pieces), "total_tokens": prompt + len(pieces)}
    head = {"id": "cmpl-mockup", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model", "mock")}
    if not body.get("stream"):
        return web.Response(body=orjson.dumps({**head, "choices": [
            {"index": 0, "text": "".join(pieces), "logprobs": None, "finish_reason": "stop"}], "usage": usage}),
            content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for p in pieces:
        await resp.write(data_event(orjson.dumps({**head, "choices": [
            {"index": 0, "text": p, "logprobs": None, "finish_reason": None}]})))
    await resp.write(data_event(orjson.dumps({**head, "choices": [
        {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]})))
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(data_event(orjson.dumps({**head, "choices": [], "usage": usage})))
    await resp.write(DONE_EVENT)
    await resp.write_eof()
    return resp


async def media(request: web.Request) -> web.StreamResponse:
    """Images and audio, answered as the built-in mock provider answers them."""
    from plugins.providers.mock_media import mock_media
    from proxy import UpstreamRequest
    from proxy.uploads import parse_upload

    from .mock_upstream import STATS_KEY

    raw = await request.read()
    content_type = request.headers.get("Content-Type", "")
    stats = request.app[STATS_KEY]
    stats["requests"] += 1
    stats["last_body"] = (parse_upload(raw, content_type).fields if content_type.startswith("multipart/")
                          else orjson.loads(raw))
    stats["last_headers"] = dict(request.headers)
    parts, answer_type = mock_media(request.path.removeprefix("/v1"), UpstreamRequest(str(request.url), raw,
                                                                                      {"Content-Type": content_type}))
    resp = web.StreamResponse(headers={"Content-Type": answer_type})
    await resp.prepare(request)
    for part in parts:
        await resp.write(part)
    await resp.write_eof()
    return resp


def add_routes(app: web.Application) -> None:
    for path in ("/v1/images/generations", "/v1/images/edits", "/v1/audio/speech", "/v1/audio/transcriptions",
                 "/v1/audio/translations"):
        app.router.add_post(path, media)
    app[STORE_KEY] = {}
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/responses/{rid}", stored)
    app.router.add_delete("/v1/responses/{rid}", stored)
    app.router.add_post("/v1/completions", completions)
