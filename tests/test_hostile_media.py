"""An upstream's media answer that overstates what it did, through the real server:
a transcription's reported audio length is believed up to what the upload can hold
(a millisecond a byte); above that (a duration in milliseconds, a broken server) the
gateway's own measure is billed, so a wrong report cannot take an account's whole
balance; images beyond the ``n`` asked are not billed (fewer are billed as
delivered); what the client is told == the ledger == the money taken."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from business import DEMO, bearer, biz_config, credits, wav

from plugins.accounts import ACCOUNTS

DURATION: web.AppKey[dict] = web.AppKey("duration")


async def images(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"created": 1, "data": [{"b64_json": "aGk="}] * request.app[DURATION]["images"]})


async def transcribe(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"text": "hello", "duration": request.app[DURATION]["value"]})


@pytest.fixture
async def upstream(serve_upstream):
    app = web.Application()
    app[DURATION] = {}
    return await serve_upstream({"POST /v1/audio/transcriptions": transcribe, "POST /v1/images/generations": images},
                                app)


@pytest.fixture
async def running(start_gateway, upstream):
    config = biz_config(upstream.url)
    config["models"]["whisper"] = {"provider": "up", "model": "whisper-1",
                                   "price": {"input": 0, "output": 0, "audio_minute": 0.6}}  # a cent a second
    config["models"]["img"] = {"provider": "up", "model": "dall-e-3",
                               "price": {"input": 0, "output": 0, "images": {"1024x1024/standard": 0.04}}}
    return await start_gateway(config)


@pytest.mark.parametrize(("reported", "billed"), [
    (2.0, 20_000),  # as measured: 2 s at $0.6 a minute
    (2.1, 21_000),  # a little more than the gateway measured: the upstream's word
    (30.0, 300_000),  # more than measured, but what the 32 kB upload can hold: the upstream's word
    (2000.0, 20_000),  # milliseconds sent as seconds: more than 32 kB can hold, so the gateway's measure
    (1e9, 20_000),
])
async def test_a_reported_audio_length_is_believed_up_to_what_the_upload_can_hold(running, upstream, reported,
                                                                                billed):
    upstream.app[DURATION]["value"] = reported
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("model", "whisper")
    form.add_field("file", wav(2.0), filename="talk.wav", content_type="audio/wav")
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/audio/transcriptions", data=form, headers=bearer(DEMO)) as r:
            assert r.status == 200
            told = round(float(r.headers["x-tollway-cost"]) * 1_000_000)
        got = await credits(s, running, DEMO)
    await running.gw.services[ACCOUNTS].writer.flush()
    [(cost,)] = await running.gw.store.fetchall("select cost_micro_usd from tollway_ledger")
    assert told == cost == got["spent_micro_usd"] == billed
    assert got["balance_micro_usd"] == 5_000_000 - billed


@pytest.mark.parametrize(("asked", "delivered", "billed"), [(2, 2, 80_000), (2, 1, 40_000), (1, 5, 40_000)])
async def test_images_are_billed_as_delivered_up_to_the_number_asked(running, upstream, asked, delivered, billed):
    upstream.app[DURATION]["images"] = delivered
    body = {"model": "img", "prompt": "a cat", "n": asked, "size": "1024x1024", "quality": "standard"}
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/images/generations", json=body, headers=bearer(DEMO)) as r:
            assert r.status == 200 and len((await r.json())["data"]) == delivered
            told = round(float(r.headers["x-tollway-cost"]) * 1_000_000)
        got = await credits(s, running, DEMO)
    await running.gw.services[ACCOUNTS].writer.flush()
    [(cost,)] = await running.gw.store.fetchall("select cost_micro_usd from tollway_ledger")
    assert told == cost == got["spent_micro_usd"] == billed
