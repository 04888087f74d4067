"""A mock Gemini upstream (Generative Language API, v1beta).

``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent``
(SSE with ``alt=sse``, else one JSON array, as Gemini does), ``:embedContent``
and ``:batchEmbedContents``. Chat answers come from
``benchmarks/fixtures/gemini`` by model name (see ``mock_fixtures``).

Requests are checked as Gemini checks them, so translation mistakes fail
tests: the key must come in ``x-goog-api-key`` (a ``key`` query parameter is
refused here: it would end up in logs), roles are ``user``/``model``, parts
are non-empty, tool schemas carry none of the keywords Gemini rejects and
arrays have ``items``, and every ``functionResponse`` names a function called
in the previous model turn. The key ``bad-key`` gets Gemini's 400
API_KEY_INVALID.
"""

from __future__ import annotations

import hashlib
import math

import orjson
from aiohttp import web

from .mock_fixtures import answer, load, record, send_stream

REJECTED = frozenset(("additionalProperties", "$schema", "default", "title", "examples", "$defs", "definitions",
                      "const", "propertyNames", "$ref", "oneOf", "allOf"))


def error(status: int, rpc: str, message: str, details: list | None = None) -> web.Response:
    err = {"code": status, "message": message, "status": rpc}
    if details:
        err["details"] = details
    return web.Response(status=status, content_type="application/json", body=orjson.dumps({"error": err}))


def schema_problem(node: object, path: str) -> str | None:
    if not isinstance(node, dict):
        return f"{path}: schema must be an object"
    for key in node:
        if key in REJECTED:
            return f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}'"
    if node.get("type") == "array" and "items" not in node:
        return f"{path}.items: missing field"
    if isinstance(node.get("type"), list):
        return f"{path}.type: must be a single type"
    for name, sub in (node.get("properties") or {}).items():
        problem = schema_problem(sub, f"{path}.properties[{name}]")
        if problem:
            return problem
    for key in ("items",):
        if key in node:
            problem = schema_problem(node[key], f"{path}.{key}")
            if problem:
                return problem
    for i, sub in enumerate(node.get("anyOf") or []):
        problem = schema_problem(sub, f"{path}.anyOf[{i}]")
        if problem:
            return problem
    return None


def check(body: dict) -> str | None:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    called: set[str] = set()
    for i, content in enumerate(contents):
        if content.get("role") not in ("user", "model"):
            return f"* GenerateContentRequest.contents[{i}].role: must be user or model"
        parts = content.get("parts")
        if not parts:
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty"
        for j, part in enumerate(parts):
            if "functionResponse" in part:
                name = part["functionResponse"].get("name")
                if name not in called or not isinstance(part["functionResponse"].get("response"), dict):
                    return f"* GenerateContentRequest.contents[{i}].parts[{j}].function_response.name: " \
                           f"{name!r} matches no function call of the previous turn"
            if not ({"text", "inlineData", "fileData", "functionCall", "functionResponse"} & part.keys()):
                return f"* GenerateContentRequest.contents[{i}].parts[{j}].data: required oneof field 'data'"
        called = {p["functionCall"]["name"] for p in parts if "functionCall" in p} if content["role"] == "model" \
            else set()
    for t, tool in enumerate(body.get("tools") or []):
        for d, decl in enumerate(tool.get("functionDeclarations") or []):
            if "parameters" in decl:
                problem = schema_problem(decl["parameters"], f"tools[{t}].function_declarations[{d}].parameters")
                if problem:
                    return problem
    schema = (body.get("generationConfig") or {}).get("responseSchema")
    if schema is not None:
        return schema_problem(schema, "generation_config.response_schema")
    return None


def embed(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    values = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _text(content: dict) -> str:
    return "".join(p.get("text", "") for p in (content or {}).get("parts") or [])


async def model_method(request: web.Request) -> web.StreamResponse:
    model, _, method = request.match_info["target"].partition(":")
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
    record(request, "gemini", body)
    if "key" in request.query:
        return error(400, "INVALID_ARGUMENT", "this mock refuses API keys in the URL (they end up in logs)")
    key = request.headers.get("x-goog-api-key")
    if not key or key == "bad-key":
        return error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                     [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])
    if method == "embedContent":
        dims = body.get("outputDimensionality") or 8
        return web.json_response({"embedding": {"values": embed(_text(body.get("content")), dims)}})
    if method == "batchEmbedContents":
        out = [{"values": embed(_text(r.get("content")), r.get("outputDimensionality") or 8)}
               for r in body.get("requests") or []]
        return web.json_response({"embeddings": out})
    if method not in ("generateContent", "streamGenerateContent"):
        return error(404, "NOT_FOUND", f"method {method} not found")
    problem = check(body)
    if problem:
        return error(400, "INVALID_ARGUMENT", problem)
    fixture = load("gemini", model)
    if fixture is None:
        return error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta")
    if method == "generateContent" or fixture.stream is None:
        return answer(fixture)
    stream = fixture.stream or b""
    if request.query.get("alt") == "sse":
        return await send_stream(request, stream)
    events = [ev[len(b"data: "):] for ev in stream.split(b"\r\n\r\n") if ev.startswith(b"data: ")]
    return await send_stream(request, b"[" + b",\r\n".join(events) + b"]", "application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1beta/models/{target}", model_method)
