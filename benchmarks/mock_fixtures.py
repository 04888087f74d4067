"""Recorded-shape answers for the provider mocks, and an app that serves them.

Fixtures live in ``benchmarks/fixtures/<provider>/<name>.json|.sse``, shaped
like the providers' documented examples: ``<name>.json`` is the non-stream
answer (or ``{"_status", "_headers", "body"}`` for an error answer),
``<name>.sse`` the stream, byte for byte; without one, stream requests get
the JSON answer too (so error fixtures fail streams before they start).
The mocks pick the fixture by the upstream *model name*: a model called
``tools`` answers ``tools.json``/``tools.sse``. Scenarios: ``text`` (with
cached prompt tokens), ``tools`` (three tools, one without arguments),
``thinking``, ``length``, ``midstream_error``, and the error answers
``rate_limited``, ``overloaded``, ``invalid``, ``auth``, ``server_error``.

``make_app()`` serves all three protocols on one port: OpenAI chat at
``/v1/chat/completions`` (fixtures, unlike ``mock_upstream``'s generated
answers), Anthropic at ``/v1/messages``, Gemini at ``/v1beta/models/...``.
``split`` (bytes) makes every stream go out in writes of that size, so
events straddle TCP reads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"
SPLIT_KEY: web.AppKey[int | None] = web.AppKey("mock_split", int)
LAST_KEY: web.AppKey[dict] = web.AppKey("mock_last_requests", dict)


@dataclass(frozen=True)
class Fixture:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: bytes | None = None


@functools.cache
def load(provider: str, name: str) -> Fixture | None:
    """The fixture ``name`` of ``provider``; None when there is none."""
    base = FIXTURES / provider
    path = base / f"{name}.json"
    if not path.is_file():
        return None
    data = orjson.loads(path.read_bytes())
    sse = base / f"{name}.sse"
    stream = sse.read_bytes() if sse.is_file() else None
    if "_status" in data:
        return Fixture(data["_status"], data.get("_headers") or {}, orjson.dumps(data["body"]), stream)
    return Fixture(200, {}, orjson.dumps(data), stream)


def names(provider: str) -> list[str]:
    return sorted(p.stem for p in (FIXTURES / provider).glob("*.json"))


def record(request: web.Request, provider: str, body: object) -> None:
    """Keep the last request per provider for tests to inspect."""
    last = request.app.get(LAST_KEY)
    if last is not None:
        last[provider] = {"body": body, "headers": dict(request.headers), "query": dict(request.query),
                          "path": request.path}


async def send_stream(request: web.Request, data: bytes, content_type: str = "text/event-stream") -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    await resp.prepare(request)
    split = request.app.get(SPLIT_KEY)
    step = split or len(data) or 1
    for i in range(0, len(data), step):
        await resp.write(data[i:i + step])
    await resp.write_eof()
    return resp


def answer(fixture: Fixture) -> web.Response:
    return web.Response(status=fixture.status, body=fixture.body, headers=fixture.headers,
                        content_type="application/json")


# -- OpenAI fixtures ------------------------------------------------------------------

async def openai_chat(request: web.Request) -> web.StreamResponse:
    body = await request.json(loads=orjson.loads)
    record(request, "openai", body)
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return web.json_response({"error": {"message": "missing key", "type": "invalid_request_error"}},
                                 status=401)
    fixture = load("openai", str(body.get("model")))
    if fixture is None:
        return web.json_response({"error": {"message": f"The model `{body.get('model')}` does not exist",
                                             "type": "invalid_request_error", "code": "model_not_found"}},
                                 status=404)
    if not body.get("stream") or fixture.stream is None:
        return answer(fixture)
    data = fixture.stream or b""
    if not (body.get("stream_options") or {}).get("include_usage"):
        # The usage chunk goes only to clients that asked for it, as OpenAI does.
        data = b"\n\n".join(ev for ev in data.split(b"\n\n") if ev and b'"choices":[]' not in ev) + b"\n\n"
    return await send_stream(request, data)


def make_app(split: int | None = None) -> web.Application:
    from . import mock_anthropic, mock_gemini

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SPLIT_KEY] = split
    app[LAST_KEY] = {}
    app.router.add_post("/v1/chat/completions", openai_chat)
    mock_anthropic.add_routes(app)
    mock_gemini.add_routes(app)
    return app
