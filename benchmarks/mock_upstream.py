"""A fast mock OpenAI-compatible upstream, for tests and the benchmark harness.

Run it alone: ``python -m benchmarks.mock_upstream --port 9000``.

Defaults come from the command line (or ``MockSettings``); each request can
override them with a ``"mock"`` object in its body (clients send it with the
OpenAI SDK's ``extra_body={"mock": {...}}``; the gateway passes unknown body
fields through):

- ``status``: answer this HTTP status with an OpenAI-shaped error
  (429 carries ``Retry-After: 7``, or ``retry_after``'s value);
- ``delay``: seconds before the response headers;
- ``key_status``: ``{api key: status}``, the status to answer requests sent with that key;
- ``hang``: never answer;
- ``ttft``: seconds before the first stream chunk; ``chunk_delay``: between chunks;
- ``chunks``: content chunks in the answer; ``chunk_size``: characters per chunk;
- ``drop_after``: stream this many chunks, then drop the connection;
- ``hang_after``: stream this many chunks, then go silent;
- ``no_done``: end the stream without usage and without ``[DONE]``;
- ``usage_null``: when usage is asked (``stream_options.include_usage``), every chunk before
  the usage chunk ends with ``"usage":null``, as OpenAI sends them (the gateway always asks);
- ``one_write``: the whole stream in one write, framed by ``Content-Length``
  (as a static server such as nginx sends a file of SSE events): many events
  arrive in one read.

An answer's bytes are rendered once per shape (model, chunks, chunk size, prompt tokens,
usage asked, ``usage_null``) and served again as they are, ``created`` included, as a
static server serves a file (issue 10 item 12 measured against nginx): rendering the 54
events of a one-write answer cost ~60 us a request, on the CPU the benchmark shares
between the mock and the load generator, which then capped every target's streams/s.

``GET /_mock/stats`` answers how many requests it has seen and the last body.
Tests make one upstream fail (or recover) on command with knobs that apply to
every request: ``app[FORCE_KEY].update(status=503)`` (``.clear()`` to recover).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from proxy.sse import DONE_EVENT, data_event


@dataclass(frozen=True)
class MockSettings:
    ttft: float = 0.0
    chunk_delay: float = 0.0
    chunks: int = 8
    chunk_size: int = 8
    delay: float = 0.0
    api_key: str | None = None  # when set, other keys get 401


SETTINGS_KEY: web.AppKey[MockSettings] = web.AppKey("mock_settings")
STATS_KEY: web.AppKey[dict] = web.AppKey("mock_stats")
FORCE_KEY: web.AppKey[dict] = web.AppKey("mock_force")  # knobs for every request (a request's own win)
RENDERED_KEY: web.AppKey[dict] = web.AppKey("mock_rendered")  # shape -> the answer's bytes (``rendered``)
RENDERED_MAX = 256  # shapes kept; past it the memo starts again


def _content_piece(i: int, size: int) -> str:
    word = f"tok{i} "
    return (word * (size // len(word) + 1))[:size]


def render_completion(model: str, chunks: int, size: int, prompt_tokens: int) -> bytes:
    text = "".join(_content_piece(i, size) for i in range(chunks))
    return orjson.dumps({
        "id": "chatcmpl-mockup", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": chunks,
                  "total_tokens": prompt_tokens + chunks},
    })


def render_stream(model: str, chunks: int, size: int, prompt_tokens: int, usage: bool,
                  usage_null: bool = False) -> list[bytes]:
    """The events of a streamed answer; with ``usage`` and ``usage_null``, each chunk before the
    usage chunk carries ``"usage":null`` (OpenAI's chunks when asked for usage)."""
    head = {"id": "chatcmpl-mockup", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    tail = {"usage": None} if usage and usage_null else {}

    def event(delta: dict, finish: str | None = None) -> bytes:
        return data_event(orjson.dumps({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                        **tail}))

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": _content_piece(i, size)}) for i in range(chunks)]
    events.append(event({}, "stop"))
    if usage:
        events.append(data_event(orjson.dumps({**head, "choices": [], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": chunks,
            "total_tokens": prompt_tokens + chunks}})))
    events.append(DONE_EVENT)
    return events


def rendered(app: web.Application, shape: tuple, render: Callable[[], Any]) -> Any:
    """What ``render()`` gives for this ``shape``, rendered on the first request of the shape only."""
    memo = app[RENDERED_KEY]
    answer = memo.get(shape)
    if answer is None:
        if len(memo) >= RENDERED_MAX:
            memo.clear()
        answer = memo[shape] = render()
    return answer


def error_body(status: int) -> bytes:
    return orjson.dumps({"error": {"message": f"mock upstream failing with {status} (secret-upstream-detail)",
                                   "type": "mock_error", "param": None, "code": f"mock_{status}"}})


def _stream_answer(model: str, chunks: int, size: int, prompt_tokens: int, usage: bool,
                   usage_null: bool) -> tuple[list[bytes], bytes]:
    """(the events, the events joined: a one-write answer's body)."""
    events = render_stream(model, chunks, size, prompt_tokens, usage, usage_null)
    return events, b"".join(events)


async def chat(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    stats = request.app[STATS_KEY]
    raw = await request.read()
    body = orjson.loads(raw)
    stats["requests"] += 1
    stats["last_body"] = body
    stats["last_headers"] = dict(request.headers)
    if settings.api_key and request.headers.get("Authorization") != f"Bearer {settings.api_key}":
        return web.Response(status=401, body=error_body(401), content_type="application/json")
    knobs = {**request.app[FORCE_KEY], **(body.get("mock") or {})}
    auth = request.headers.get("Authorization", "")
    stats["keys"][auth] = stats["keys"].get(auth, 0) + 1
    s = replace(settings, **{k: v for k, v in knobs.items() if k in MockSettings.__dataclass_fields__})
    if knobs.get("hang"):
        await asyncio.sleep(3600)
    if s.delay:
        await asyncio.sleep(s.delay)
    status = knobs.get("status") or (knobs.get("key_status") or {}).get(auth.removeprefix("Bearer "))
    if status:
        headers = {"Retry-After": str(knobs.get("retry_after", 7))} if status == 429 else {}
        return web.Response(status=status, body=error_body(status), content_type="application/json",
                            headers=headers)
    prompt_tokens = max(1, len(orjson.dumps(body.get("messages"))) // 16)  # depends on the messages only
    model = body.get("model", "mock")
    app = request.app
    if not body.get("stream"):
        answer = rendered(app, ("whole", model, s.chunks, s.chunk_size, prompt_tokens),
                          lambda: render_completion(model, s.chunks, s.chunk_size, prompt_tokens))
        return web.Response(body=answer, content_type="application/json")
    usage = bool((body.get("stream_options") or {}).get("include_usage")) and not knobs.get("no_done")
    usage_null = bool(knobs.get("usage_null"))
    events, joined = rendered(app, ("stream", model, s.chunks, s.chunk_size, prompt_tokens, usage, usage_null),
                              lambda: _stream_answer(model, s.chunks, s.chunk_size, prompt_tokens, usage, usage_null))
    if knobs.get("no_done"):
        events, joined = events[:-1], None
    if knobs.get("one_write"):
        if s.ttft:
            await asyncio.sleep(s.ttft)
        return web.Response(body=joined if joined is not None else b"".join(events),
                            headers={"Cache-Control": "no-cache"}, content_type="text/event-stream")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    if s.ttft:
        await asyncio.sleep(s.ttft)
    drop_after, hang_after = knobs.get("drop_after"), knobs.get("hang_after")
    for i, ev in enumerate(events):
        if drop_after is not None and i >= drop_after:
            request.transport.abort()
            return resp
        if hang_after is not None and i >= hang_after:
            await asyncio.sleep(3600)
        if i and s.chunk_delay:
            await asyncio.sleep(s.chunk_delay)
        await resp.write(ev)
    await resp.write_eof()
    return resp


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json(loads=orjson.loads)
    request.app[STATS_KEY]["requests"] += 1
    inputs = body.get("input")
    items = [inputs] if isinstance(inputs, str) else list(inputs or [])
    data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1)] * 8} for i in range(len(items))]
    if body.get("encoding_format") == "base64":  # little-endian float32, as OpenAI sends it
        from plugins.providers.mock import base64_floats
        for item in data:
            item["embedding"] = base64_floats(item["embedding"])
    return web.Response(body=orjson.dumps({"object": "list", "data": data, "model": body.get("model"),
                                           "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}}),
                        content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    st = request.app[STATS_KEY]
    return web.Response(body=orjson.dumps({"requests": st["requests"], "last_body": st["last_body"]}),
                        content_type="application/json")


def make_app(settings: MockSettings | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SETTINGS_KEY] = settings or MockSettings()
    app[STATS_KEY] = {"requests": 0, "last_body": None, "last_headers": None, "keys": {}}
    app[FORCE_KEY] = {}
    app[RENDERED_KEY] = {}
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/_mock/stats", stats)
    # Anthropic (/v1/messages) and Gemini (/v1beta/models/...) from fixtures.
    from . import mock_anthropic, mock_gemini, mock_responses
    mock_anthropic.add_routes(app)
    mock_gemini.add_routes(app)
    mock_responses.add_routes(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the mock; prints ``mock listening on http://HOST:PORT`` once bound
    (``--port 0`` lets the OS choose, as the harness does via ``serve_mock``)."""
    p = argparse.ArgumentParser(description="tollway's mock OpenAI-compatible upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--ttft", type=float, default=0.0)
    p.add_argument("--chunk-delay", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args(argv)
    settings = MockSettings(ttft=args.ttft, chunk_delay=args.chunk_delay, chunks=args.chunks,
                            chunk_size=args.chunk_size, delay=args.delay)
    sock = socket.create_server((args.host, args.port), backlog=2048)
    print(f"mock listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    web.run_app(make_app(settings), sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
