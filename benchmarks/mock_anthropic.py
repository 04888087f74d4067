"""A mock Anthropic Messages upstream: ``POST /v1/messages``.

Answers from ``benchmarks/fixtures/anthropic`` by model name (see
``mock_fixtures``), and checks requests the way Anthropic does, so that a
translation mistake fails a test with Anthropic's own kind of 400:
``x-api-key`` and ``anthropic-version`` headers, required ``max_tokens``,
only user/assistant roles, no empty text blocks, temperature within 0-1, and
every ``tool_use`` answered by ``tool_result`` blocks at the start of the next
user message. The key ``bad-key`` gets a 401.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from .mock_fixtures import answer, load, record, send_stream


def error(status: int, kind: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        body=orjson.dumps({"type": "error", "error": {"type": kind, "message": message}}))


def check(body: dict) -> str | None:
    """Anthropic's complaint about the body, or None."""
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    pending: set[str] = set()
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            return f"messages.{i}.content: Input should be a valid list"
        if pending:
            answered = set()
            for block in blocks:
                if block.get("type") != "tool_result":
                    break
                answered.add(block.get("tool_use_id"))
            if m["role"] != "user" or not pending <= answered:
                return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                        f"after: {', '.join(sorted(pending - answered))}")
            pending = set()
        for j, block in enumerate(blocks):
            kind = block.get("type")
            if kind == "text" and not block.get("text"):
                return f"messages.{i}.content.{j}.text: text content blocks must be non-empty"
            if kind == "tool_use":
                if m["role"] != "assistant" or not isinstance(block.get("input"), dict):
                    return f"messages.{i}.content.{j}: invalid tool_use block"
                pending.add(block.get("id"))
            if kind == "tool_result" and m["role"] != "user":
                return f"messages.{i}.content.{j}: tool_result blocks belong in user messages"
            if kind == "image" and block.get("source", {}).get("type") not in ("base64", "url"):
                return f"messages.{i}.content.{j}.source: invalid image source"
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid string or list"
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool.get("input_schema"), dict):
            return f"tools.{i}.input_schema: Field required"
    return None


async def messages(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        return error(400, "invalid_request_error", "invalid JSON body")
    record(request, "anthropic", body)
    key = request.headers.get("x-api-key")
    if not key or key == "bad-key":
        return error(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return error(400, "invalid_request_error", "anthropic-version: header is required")
    problem = check(body)
    if problem:
        return error(400, "invalid_request_error", problem)
    fixture = load("anthropic", body["model"])
    if fixture is None:
        return error(404, "not_found_error", f"model: {body['model']}")
    if not body.get("stream") or fixture.stream is None:
        return answer(fixture)
    return await send_stream(request, fixture.stream or b"")


async def count_tokens(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens``: a deterministic count (one per four bytes of the
    messages, system and tools); refuses ``max_tokens`` as Anthropic does."""
    body = await request.json(loads=orjson.loads)
    record(request, "anthropic", body)
    key = request.headers.get("x-api-key")
    if not key or key == "bad-key":
        return error(401, "authentication_error", "invalid x-api-key")
    if "max_tokens" in body:
        return error(400, "invalid_request_error", "max_tokens: Extra inputs are not permitted")
    if not isinstance(body.get("messages"), list):
        return error(400, "invalid_request_error", "messages: Field required")
    counted = orjson.dumps([body.get("system"), body["messages"], body.get("tools")])
    return web.Response(body=orjson.dumps({"input_tokens": len(counted) // 4}), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
