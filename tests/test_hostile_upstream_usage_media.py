"""A hostile or broken upstream usage on the media routes, through the real server with
the openai SDK: images (gpt-image-1) and transcriptions (gpt-4o-transcribe) on models
priced by tokens, whose answers report ``usage: {input_tokens, output_tokens}``.

Before, a usage without ``output_tokens`` was billed 0 output tokens: the image or the
transcript went out free of its output. The gateway cannot count image or audio tokens,
so an unknown output count costs the output's bound (what quotas held for it: the
model's output cap, times ``n`` for images), with the upstream's input count, marked
estimated, as a usage that names no usable count costs both bounds; a transcript's
output is its text, counted (``test_transcript_output_counted.py``). Held already: a
count that is not one (negative, a string, absurd) is unknown usage, billed its bounds;
a reported audio length that is not a number (negative, a string) is not believed. Each
time: the ledger row == x-tollway-cost == the money taken."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from aiohttp import web
from business import DEMO, biz_config, credits, ledger_rows, wav

from plugins.accounts.tokens import count_tokens

USAGE: web.AppKey[dict] = web.AppKey("usage")
TEXT = "the words that were heard " * 10
PRICE = {"input": 5.0, "output": 40.0}  # USD per 1M tokens: micro-USD 5 and 40 a token


async def images(request: web.Request) -> web.Response:
    await request.read()
    usage = request.app[USAGE]["usage"]
    return web.json_response({"created": 1, "data": [{"b64_json": "aGk="}] * 2, "usage": usage})


async def transcribe(request: web.Request) -> web.Response:
    await request.post()
    state = request.app[USAGE]
    return web.json_response({"text": TEXT, "usage": state["usage"], **state.get("more", {})})


@pytest.fixture
async def upstream(serve_upstream):
    app = web.Application()
    app[USAGE] = {}
    return await serve_upstream({"POST /v1/images/generations": images, "POST /v1/audio/transcriptions": transcribe},
                                app)


@pytest.fixture
async def running(start_gateway, upstream):
    config = biz_config(upstream.url)
    config["models"]["image"] = {"provider": "up", "model": "gpt-image-1", "price": PRICE}
    config["models"]["transcribe"] = {"provider": "up", "model": "gpt-4o-transcribe", "price": PRICE}
    config["models"]["whisper"] = {"provider": "up", "model": "whisper-1",
                                   "price": {"input": 0, "output": 0, "audio_minute": 0.6}}  # a cent a second
    return await start_gateway(config)


async def ask(running, endpoint: str) -> tuple[int, dict]:
    """One images (n=2) or transcriptions call: (micro-USD told, the ledger row)."""
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        if endpoint == "images":
            raw = await client.images.with_raw_response.generate(model="image", prompt="a cat", n=2)
            assert len(raw.parse().data) == 2
        else:
            raw = await client.audio.transcriptions.with_raw_response.create(
                model="whisper" if endpoint == "whisper" else "transcribe", file=("talk.wav", wav(2.0)),
                response_format="json")
            assert raw.parse().text == TEXT
    told = round(float(raw.headers["x-tollway-cost"]) * 1e6)
    [row] = await ledger_rows(running, "prompt", "completion", "cost", "estimated")
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, DEMO)
    assert told == row["cost"] == got["spent_micro_usd"] and got["balance_micro_usd"] == 5_000_000 - told
    assert got["reserved_micro_usd"] == 0
    return told, row


ENDPOINTS = ["images", "transcriptions"]


async def output_billed(endpoint: str) -> int:
    """Images: their bound (the default output cap, times n); a transcript: its counted text."""
    return 4096 * 2 if endpoint == "images" else await count_tokens(TEXT)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_usage_without_an_output_count_costs_the_output_bound(running, upstream, endpoint):
    upstream.app[USAGE]["usage"] = {"input_tokens": 20, "total_tokens": 20}
    told, row = await ask(running, endpoint)
    completion = await output_billed(endpoint)
    assert row == {"prompt": 20, "completion": completion, "cost": 20 * 5 + completion * 40, "estimated": 1}


@pytest.mark.parametrize("usage", [{"input_tokens": 50, "output_tokens": -5},
                                   {"input_tokens": "50", "output_tokens": 9},
                                   {"input_tokens": 50, "output_tokens": 1e30}, {"input_tokens": None}],
                         ids=["negative", "string", "absurd", "null"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_usage_that_is_not_one_costs_the_bounds(running, upstream, endpoint, usage):
    upstream.app[USAGE]["usage"] = usage
    told, row = await ask(running, endpoint)
    completion = await output_billed(endpoint)
    assert row["completion"] == completion and row["estimated"] == 1 and row["prompt"] > 0  # (the prompt bound)
    assert told == row["prompt"] * 5 + completion * 40


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_usable_usage_is_billed_as_told(running, upstream, endpoint):
    upstream.app[USAGE]["usage"] = {"input_tokens": 50, "output_tokens": 100.0, "total_tokens": 150}
    told, row = await ask(running, endpoint)
    assert row == {"prompt": 50, "completion": 100, "cost": 50 * 5 + 100 * 40, "estimated": 0}


@pytest.mark.parametrize("usage", [{"type": "duration", "seconds": -30}, {"type": "duration", "seconds": "30"},
                                   {"type": "duration", "seconds": True}, {"type": "tokens", "input_tokens": 50}],
                         ids=["negative", "string", "boolean", "tokens"])
async def test_a_minute_priced_transcription_is_billed_its_measured_length(running, upstream, usage):
    """whisper at $0.6 a minute: a reported length that is not a number is not believed (the
    2 s measured are billed); token counts do not change a price by the minute."""
    upstream.app[USAGE]["usage"] = usage
    told, row = await ask(running, "whisper")
    assert told == 20_000
