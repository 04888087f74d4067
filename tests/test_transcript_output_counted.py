"""A transcription (or translation: audio in, text out) on a model priced by tokens
(gpt-4o-transcribe) whose upstream gives no output count: its text is in the answer the
client got, so the gateway counts it (the tokenizer, as for chat), capped by the output's
bound, marked estimated. Before, it was billed the whole output bound (4096 tokens of the
default cap for a transcript of a few dozen). The audio input still cannot be counted: it
costs its bound, or the upstream's input count when it gave one.

Through the real server with the openai SDK, in every response format (json,
verbose_json, text, srt, vtt: the subtitle formats' cue numbers and times are not the
model's output), with no usage and with an input count alone: the ledger row, the cost
told in x-tollway-cost and the balance."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from aiohttp import web
from business import DEMO, biz_config, credits, ledger_rows, wav

from plugins.accounts.tokens import count_tokens

STATE: web.AppKey[dict] = web.AppKey("state")
TEXT = " ".join(["the words that were heard, and a few more of them"] * 6) + "."
PRICE = {"input": 5.0, "output": 40.0}  # USD per 1M tokens: micro-USD 5 and 40 a token
FORMATS = ["json", "verbose_json", "text", "srt", "vtt"]


async def transcribe(request: web.Request) -> web.Response:
    form = await request.post()
    fmt = form.get("response_format", "json")
    usage = request.app[STATE].get("usage")
    said = {"usage": usage} if usage is not None else {}
    if fmt == "json":
        return web.json_response({"text": TEXT, **said})
    if fmt == "verbose_json":
        return web.json_response({"task": "transcribe", "language": "english", "duration": 2.0, "text": TEXT,
                                  "segments": [{"id": 0, "start": 0.0, "end": 2.0, "text": TEXT}], **said})
    if fmt == "text":
        return web.Response(text=TEXT + "\n", content_type="text/plain")
    if fmt == "srt":
        return web.Response(text=f"1\n00:00:00,000 --> 00:00:02,000\n{TEXT}\n\n", content_type="text/plain")
    return web.Response(text=f"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n{TEXT}\n\n", content_type="text/vtt")


@pytest.fixture
async def upstream(serve_upstream):
    app = web.Application()
    app[STATE] = {}
    return await serve_upstream({"POST /v1/audio/transcriptions": transcribe,
                                 "POST /v1/audio/translations": transcribe}, app)


@pytest.fixture
async def running(start_gateway, upstream):
    config = biz_config(upstream.url)
    config["models"]["transcribe"] = {"provider": "up", "model": "gpt-4o-transcribe", "price": PRICE}
    config["models"]["terse"] = {"provider": "up", "model": "gpt-4o-transcribe", "price": PRICE,
                                 "max_output_tokens": 5}
    return await start_gateway(config)


async def ask(running, endpoint: str, model: str, fmt: str) -> tuple[int, dict]:
    """One transcription or translation with the openai SDK: (micro-USD told, the ledger row)."""
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        api = client.audio.transcriptions if endpoint == "transcriptions" else client.audio.translations
        raw = await api.with_raw_response.create(model=model, file=("talk.wav", wav(2.0)), response_format=fmt)
        answer = raw.parse()
        assert TEXT in (answer if isinstance(answer, str) else answer.text)
    told = round(float(raw.headers["x-tollway-cost"]) * 1e6)
    [row] = await ledger_rows(running, "status", "prompt", "completion", "cost", "estimated")
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, DEMO)
    assert told == row["cost"] == got["spent_micro_usd"] and got["balance_micro_usd"] == 5_000_000 - told
    assert got["reserved_micro_usd"] == 0
    return told, row


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
async def test_a_transcript_without_usage_is_billed_its_counted_text(running, endpoint, fmt):
    told, row = await ask(running, endpoint, "transcribe", fmt)
    text = await count_tokens(TEXT)
    assert 0 < text < 4096
    assert row["completion"] == text and row["estimated"] == 1 and row["status"] == 200, row
    assert row["prompt"] > 0 and told == row["prompt"] * 5 + text * 40  # the audio: its bound


@pytest.mark.parametrize("fmt", ["json", "verbose_json"])
async def test_an_input_count_without_an_output_count_bills_the_counted_text(running, upstream, fmt):
    upstream.app[STATE]["usage"] = {"type": "tokens", "input_tokens": 20, "total_tokens": 20}
    told, row = await ask(running, "transcriptions", "transcribe", fmt)
    text = await count_tokens(TEXT)
    assert row == {"status": 200, "prompt": 20, "completion": text, "cost": 20 * 5 + text * 40, "estimated": 1}


async def test_the_count_is_capped_by_the_output_bound(running):
    """``terse`` may write 5 tokens (``max_output_tokens``): the reservation's bound caps the count."""
    told, row = await ask(running, "transcriptions", "terse", "json")
    assert row["completion"] == 5 and row["estimated"] == 1 and told == row["prompt"] * 5 + 5 * 40
