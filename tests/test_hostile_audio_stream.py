"""``stream`` on /v1/audio/transcriptions and /translations is refused before the upstream is called:
400 naming ``stream``, nothing charged, through the openai SDK and raw multipart ("true", "1", "yes").

Before, the multipart body went upstream as sent: an upstream that streams a transcript
(gpt-4o-transcribe) answered SSE events, which the gateway held until the last one and relayed
whole (the client saw no event before the end), and whose usage (in ``transcript.text.done``) it
never read: a token-priced model was billed its worst case, marked estimated (here 81,850
micro-USD, 16,356 + 4,096 tokens, for the transcript the same request without stream is billed
430 for: 12 + 40 tokens)."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest
from aiohttp import web
from business import DEMO, bearer, biz_config, credits, ledger_rows, wav

CALLS: web.AppKey[list] = web.AppKey("calls")
BOUNDARY = "tollway-test-boundary"
DELTAS = ["the quick ", "brown fox"]


async def transcribe(request: web.Request) -> web.StreamResponse:
    """OpenAI's answer to stream=true: transcript.text.delta events, then transcript.text.done with usage."""
    form = await request.post()
    request.app[CALLS].append(dict(form))
    if form.get("stream") != "true":
        return web.json_response({"text": "".join(DELTAS), "usage": {"type": "tokens", "input_tokens": 12,
                                                                     "output_tokens": 40, "total_tokens": 52}})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for delta in DELTAS:
        await resp.write(b"data: " + json.dumps({"type": "transcript.text.delta", "delta": delta}).encode() + b"\n\n")
    done = {"type": "transcript.text.done", "text": "".join(DELTAS),
            "usage": {"type": "tokens", "input_tokens": 12, "output_tokens": 40, "total_tokens": 52}}
    await resp.write(b"data: " + json.dumps(done).encode() + b"\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def upstream(serve_upstream):
    app = web.Application()
    app[CALLS] = []
    return await serve_upstream({"POST /v1/audio/transcriptions": transcribe,
                                 "POST /v1/audio/translations": transcribe}, app)


@pytest.fixture
async def running(start_gateway, upstream):
    config = biz_config(upstream.url)
    config["models"]["4o-transcribe"] = {"provider": "up", "model": "gpt-4o-transcribe",
                                         "price": {"input": 2.5, "output": 10.0}}
    config["models"]["whisper"] = {"provider": "up", "model": "whisper-1",
                                   "price": {"input": 0, "output": 0, "audio_minute": 0.6}}
    return await start_gateway(config)


def multipart(**fields: str) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                 "Content-Type: audio/wav\r\n\r\n".encode() + wav(1.0) + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("model", ["4o-transcribe", "whisper"])
async def test_a_streamed_transcription_is_refused_with_the_sdk(running, upstream, model):
    async with aiohttp.ClientSession() as s:
        before = await credits(s, running, DEMO)
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            stream = await client.audio.transcriptions.create(model=model, file=("a.wav", wav(1.0)), stream=True)
            async for _ in stream:
                pass
        # without stream: served and billed as before
        text = await client.audio.transcriptions.create(model=model, file=("a.wav", wav(1.0)))
    error = refused.value.body
    assert (error["param"], error["code"]) == ("stream", "stream_not_supported"), error
    assert "ask without it" in error["message"]
    assert text.text == "".join(DELTAS)
    assert [call.get("stream") for call in upstream.app[CALLS]] == [None]  # the refused one never went upstream
    async with aiohttp.ClientSession() as s:
        after = await credits(s, running, DEMO)
    [row] = [r for r in await ledger_rows(running, "status", "cost", "estimated") if r["status"] == 200]
    assert before["balance_micro_usd"] - after["balance_micro_usd"] == row["cost"] > 0
    assert row["estimated"] == 0


@pytest.mark.parametrize("path", ["/audio/transcriptions", "/audio/translations"])
@pytest.mark.parametrize(("value", "refused"), [("true", True), ("True", True), ("1", True), ("yes", True),
                                                ("false", False), ("0", False)])
async def test_every_stream_value_but_false_is_refused(running, upstream, path, value, refused):
    headers = {**bearer(DEMO), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with aiohttp.ClientSession() as s, s.post(
            running.url + path, data=multipart(model="4o-transcribe", stream=value), headers=headers) as r:
        status, body = r.status, await r.json()
    if refused:
        assert (status, body["error"]["param"]) == (400, "stream"), body
        assert upstream.app[CALLS] == []
    else:
        assert (status, body["text"]) == (200, "".join(DELTAS)), body
