"""Images (generations, edits), speech and transcriptions through the real server
with the official openai SDK: priced by the unit (per image by size and quality,
per input character, per minute of audio), each answer's ledger row == money
taken == what the client was told; uploads bounded; bad input named."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from business import DEMO, bearer, biz_config, credits, ledger_rows, wav

IMAGE_PRICES = {"1024x1024/standard": 0.04, "1024x1024/hd": 0.08, "1792x1024/hd": 0.12}


@pytest.fixture
async def running(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url)
    zero = {"input": 0, "output": 0}
    config["models"].update({
        "img": {"provider": "up", "model": "dall-e-3", "price": {**zero, "images": IMAGE_PRICES}},
        "img-local": {"provider": "local", "price": {**zero, "images": IMAGE_PRICES}},
        "tts": {"provider": "up", "model": "tts-1", "price": {**zero, "characters": 15.0}},
        "tts-local": {"provider": "local", "price": {**zero, "characters": 15.0}},
        "whisper": {"provider": "up", "model": "whisper-1", "price": {**zero, "audio_minute": 0.006}},
        "whisper-local": {"provider": "local", "price": {**zero, "audio_minute": 0.006}},
    })
    config["server"]["max_upload_bytes"] = 200_000
    return await start_gateway(config)


@pytest.fixture
async def client(running):
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as c:
        yield c


async def ledger(running) -> list[dict]:
    return await ledger_rows(running, "endpoint", "status", "error_code", "cost", "images", "characters", "audio_ms")


async def spent(running) -> int:
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, DEMO)
    assert got["reserved_micro_usd"] == 0 and got["balance_micro_usd"] == 5_000_000 - got["spent_micro_usd"]
    return got["spent_micro_usd"]


async def last_upstream_body(mock_upstream) -> dict:
    async with aiohttp.ClientSession() as s, s.get(mock_upstream.make_url("/_mock/stats")) as r:
        return (await r.json())["last_body"]


@pytest.mark.parametrize("model", ["img", "img-local"])
async def test_images_are_priced_per_image_by_size_and_quality(running, client, mock_upstream, model):
    raw = await client.images.with_raw_response.generate(model=model, prompt="a cat", n=2, size="1024x1024",
                                                         quality="hd")
    r = raw.parse()
    assert len(r.data) == 2 and r.data[0].b64_json
    assert raw.headers["x-tollway-cost"] == "0.160000"
    await client.images.generate(model=model, prompt="a cat", size="1792x1024", quality="hd")  # 0.12
    await client.images.generate(model=model, prompt="a cat", size="1024x1024")  # the dearest of its size: 0.08
    await client.images.generate(model=model, prompt="a cat", size="auto", quality="standard")  # of standard: 0.04
    await client.images.generate(model=model, prompt="a cat")  # nothing said: the dearest of all, 0.12
    rows = await ledger(running)
    assert [(row["endpoint"], row["cost"]) for row in rows] == [("images", 160_000), ("images", 120_000),
                                                                ("images", 80_000), ("images", 40_000),
                                                                ("images", 120_000)]
    assert await spent(running) == 520_000
    assert [row["images"] for row in rows] == [2, 1, 1, 1, 1]
    if model == "img":
        assert (await last_upstream_body(mock_upstream))["model"] == "dall-e-3"


async def test_an_unpriced_image_size_is_refused_before_the_upstream(running, client, mock_upstream):
    with pytest.raises(openai.BadRequestError) as exc:
        await client.images.generate(model="img", prompt="a cat", size="512x512", quality="standard")
    assert exc.value.body["param"] == "size" and "1024x1024/standard" in exc.value.message
    assert (await last_upstream_body(mock_upstream)) is None and await spent(running) == 0


async def test_a_streamed_image_is_refused_before_the_upstream(running, mock_upstream):
    """gpt-image-1 streams partial images as events the gateway neither prices nor passes on:
    it answered 502 and charged nothing, after the upstream had made (and billed) the images."""
    async with aiohttp.ClientSession() as s, s.post(running.url + "/images/generations", headers=bearer(DEMO), json={
            "model": "img", "prompt": "a cat", "size": "1024x1024", "stream": True, "partial_images": 2}) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "stream"
    assert (await last_upstream_body(mock_upstream)) is None and await spent(running) == 0


@pytest.mark.parametrize("model", ["img", "img-local"])
async def test_an_image_edit_upload_is_passed_on_and_billed(running, client, mock_upstream, model):
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000
    r = await client.images.edit(model=model, image=("cat.png", png, "image/png"), prompt="add a hat",
                                 size="1024x1024", quality="standard")
    assert len(r.data) == 1
    [row] = await ledger(running)
    assert (row["endpoint"], row["cost"]) == ("image_edits", 40_000) and await spent(running) == 40_000
    if model == "img":
        sent = await last_upstream_body(mock_upstream)
        assert sent["model"] == "dall-e-3" and sent["prompt"] == "add a hat"


@pytest.mark.parametrize("model", ["tts", "tts-local"])
async def test_speech_is_streamed_and_priced_per_character(running, client, model):
    async with client.audio.speech.with_streaming_response.create(model=model, voice="alloy",
                                                                  input="hello world") as r:
        assert r.headers["content-type"] == "audio/mpeg"
        assert r.headers["x-tollway-cost"] == "0.000165"  # 11 characters at $15 per 1M
        audio = b"".join([chunk async for chunk in r.iter_bytes()])
    assert len(audio) == 1100 and audio.startswith(b"ID3")
    [row] = await ledger(running)
    assert (row["endpoint"], row["cost"]) == ("speech", 165) and await spent(running) == 165
    assert row["characters"] == 11


@pytest.mark.parametrize("model", ["whisper", "whisper-local"])
async def test_every_transcription_format_is_billed_by_the_minute(running, client, mock_upstream, model):
    audio = wav(3.0)
    for fmt in ("json", "verbose_json", "text", "srt", "vtt"):
        r = await client.audio.transcriptions.with_raw_response.create(model=model, file=("talk.wav", audio),
                                                                       response_format=fmt)
        assert r.headers["x-tollway-cost"] == "0.000300", fmt  # 3 s at $0.006 a minute
        assert "mock transcript of talk.wav" in r.text
    await client.audio.translations.create(model=model, file=("talk.wav", audio))
    rows = await ledger(running)
    assert [row["cost"] for row in rows] == [300] * 6
    assert [row["audio_ms"] for row in rows] == [3000] * 6
    assert [row["endpoint"] for row in rows] == ["transcriptions"] * 5 + ["translations"]
    assert await spent(running) == 1800
    if model == "whisper":
        assert (await last_upstream_body(mock_upstream))["model"] == "whisper-1"


async def test_media_on_a_model_priced_by_tokens_is_served_billed_and_told(running, client):
    """A model without a unit price bills images and audio by the tokens the upstream
    reports, else (none reported) by its reservation, told like any cost (it was a 500:
    the reservation of a unit price that is not there)."""
    told = []
    r = await client.images.with_raw_response.generate(model="echo", prompt="a cat", size="1024x1024")
    told.append(r.headers["x-tollway-cost"])
    async with client.audio.speech.with_streaming_response.create(model="echo", voice="alloy", input="hi") as r:
        told.append(r.headers["x-tollway-cost"])
        await r.read()
    r = await client.audio.transcriptions.with_raw_response.create(model="echo", file=("talk.wav", wav(1.0)))
    told.append(r.headers["x-tollway-cost"])
    rows = await ledger(running)
    assert [row["status"] for row in rows] == [200] * 3
    assert [row["cost"] for row in rows] == [round(float(t) * 1e6) for t in told]
    assert all(row["cost"] > 0 for row in rows) and await spent(running) == sum(row["cost"] for row in rows)


async def test_upload_limits_and_bad_input_name_the_problem(running):
    async def post(path: str, **kw) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.post(running.url + path, headers=bearer(DEMO), **kw) as r:
            return r.status, await r.json()

    def form(**fields) -> aiohttp.FormData:
        data = aiohttp.FormData(default_to_multipart=True)
        for name, value in fields.items():
            if isinstance(value, bytes):
                data.add_field(name, value, filename=f"{name}.wav", content_type="audio/wav")
            else:
                data.add_field(name, value)
        return data

    status, body = await post("/audio/transcriptions", data=form(model="whisper", file=b"\x00" * 300_000))
    assert status == 413 and body["error"]["code"] == "upload_too_large"
    status, body = await post("/audio/transcriptions", json={"model": "whisper"})
    assert status == 415 and "multipart/form-data" in body["error"]["message"]
    status, body = await post("/audio/transcriptions", data=form(model="whisper"))
    assert status == 400 and body["error"]["param"] == "file"
    status, body = await post("/audio/transcriptions", data=form(model="whisper", file=b"not audio at all",
                                                                response_format="srt"))
    assert status == 400 and body["error"]["param"] == "response_format"
    assert body["error"]["code"] == "unmeasurable_audio"
    status, body = await post("/audio/transcriptions", data=form(model="whisper", file=wav(1), response_format="x"))
    assert status == 400 and body["error"]["param"] == "response_format"
    status, body = await post("/audio/speech", json={"model": "tts", "input": "hi"})
    assert status == 400 and body["error"]["param"] == "voice"
    status, body = await post("/audio/speech", json={"model": "tts", "voice": "alloy", "input": ""})
    assert status == 400 and body["error"]["param"] == "input"
    status, body = await post("/images/generations", json={"model": "img", "n": 2})
    assert status == 400 and body["error"]["param"] == "prompt"
    status, body = await post("/images/generations", json={"model": "img", "prompt": "x", "n": 0})
    assert status == 400 and body["error"]["param"] == "n"
    status, body = await post("/images/edits", data=form(model="img", prompt="x"))
    assert status == 400 and body["error"]["param"] == "image"
    # Two of a field: the gateway would price one and the upstream might serve the other.
    twice = form(model="whisper", file=wav(1), response_format="text")
    twice.add_field("file", wav(3), filename="long.wav", content_type="audio/wav")
    status, body = await post("/audio/transcriptions", data=twice)
    assert status == 400 and body["error"]["param"] == "file"
    twice = form(model="whisper", file=wav(1))
    twice.add_field("model", "whisper-local")
    status, body = await post("/audio/transcriptions", data=twice)
    assert status == 400 and body["error"]["param"] == "model"
    async with aiohttp.ClientSession() as s:
        broken = b"--xyz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n"
        async with s.post(running.url + "/audio/transcriptions", data=broken,
                          headers={**bearer(DEMO), "Content-Type": "multipart/form-data; boundary=xyz"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_multipart"
    assert await spent(running) == 0


async def test_an_unfunded_key_is_refused_before_the_upstream(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url, keys=[{"name": "poor", "key": DEMO, "credits": 0.05}])
    config["models"]["img"] = {"provider": "up", "price": {"input": 0, "output": 0, "images": IMAGE_PRICES}}
    running = await start_gateway(config)
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as exc:
            await client.images.generate(model="img", prompt="x", n=2, size="1024x1024", quality="standard")
        assert exc.value.status_code == 402 and "$0.080000" in exc.value.message
        r = await client.images.generate(model="img", prompt="x", size="1024x1024", quality="standard")
        assert len(r.data) == 1


@pytest.mark.parametrize("model", ["echo", "up"])
async def test_embeddings_honour_base64_encoding(running, model):
    import base64
    import struct

    async with aiohttp.ClientSession() as s:
        payloads = []
        for fmt in ("float", "base64"):
            async with s.post(running.url + "/embeddings", headers=bearer(DEMO),
                              json={"model": model, "input": ["a", "b"], "encoding_format": fmt}) as r:
                assert r.status == 200
                payloads.append((await r.json())["data"])
    floats, encoded = payloads
    for plain, packed in zip(floats, encoded, strict=True):
        raw = base64.b64decode(packed["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(plain["embedding"], rel=1e-6) and any(decoded)


async def test_an_upload_is_not_counted_as_tokens_by_the_rate_limiter(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url, keys=[{"name": "demo", "key": DEMO, "credits": 5.0,
                                                  "limits": {"tpm": 1000}}])
    config["models"]["whisper"] = {"provider": "up", "price": {"input": 0, "output": 0, "audio_minute": 0.006}}
    running = await start_gateway(config)
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        for _ in range(3):  # 3 x 160 kB of audio: far above 1000 tokens a minute if its bytes were tokens
            r = await client.audio.transcriptions.create(model="whisper", file=("a.wav", wav(10.0)))
            assert r.text == "mock transcript of a.wav"
