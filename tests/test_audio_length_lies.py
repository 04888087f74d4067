"""Audio whose own header lies about its length, sent for a transcription in a format
that carries no usage (text, srt, vtt): the gateway bills from its own measure, so
that measure must not believe a header that claims less than the file holds (a
Xing frame count of 1 in front of 26 s of MP3; a WAV data size of 1 s in front of
30 s). Billed for what the file holds; told == ledger == taken."""

from __future__ import annotations

import struct

import aiohttp
import pytest
from aiohttp import web
from business import DEMO, bearer, biz_config, credits, ledger_rows
from business import wav as silent_wav

MP3_HEAD = bytes([0xFF, 0xFB, 0x90, 0x64])  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz, joint stereo
MP3_FRAME = 144 * 128_000 // 44_100  # bytes a frame (no padding); 1152 samples: 26.1 ms


def mp3(frames: int, claimed: int | None = None) -> bytes:
    """``frames`` silent MP3 frames; with ``claimed``, a Xing header frame first that says so many."""
    out = b""
    if claimed is not None:
        xing = b"\x00" * 32 + b"Xing" + struct.pack(">III", 3, claimed, MP3_FRAME * claimed)
        out = MP3_HEAD + xing + b"\x00" * (MP3_FRAME - 4 - len(xing))
    return out + (MP3_HEAD + b"\x00" * (MP3_FRAME - 4)) * frames


def wav(seconds: float, claimed: float | None = None, rate: int = 8000) -> bytes:
    """A WAV of ``seconds``; with ``claimed``, its data chunk says it lasts that long."""
    data = silent_wav(seconds, rate)
    if claimed is not None:
        i = data.index(b"data")
        data = data[:i + 4] + struct.pack("<I", int(claimed * rate) * 2) + data[i + 8:]
    return data


async def transcribe(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="hello there\n", content_type="text/plain")


@pytest.fixture
async def running(start_gateway, serve_upstream):
    upstream = await serve_upstream({"POST /v1/audio/transcriptions": transcribe})
    config = biz_config(upstream.url)
    config["models"]["whisper"] = {"provider": "up", "model": "whisper-1",
                                   "price": {"input": 0, "output": 0, "audio_minute": 0.6}}  # a cent a second
    config["server"]["max_upload_bytes"] = 2_000_000
    return await start_gateway(config)


@pytest.mark.parametrize(("name", "data", "seconds"), [
    ("lying.mp3", mp3(1000, claimed=1), 26.1),
    ("lying.wav", wav(30, claimed=1), 30.0),
    ("honest.mp3", mp3(1000), 26.1),
    ("honest.wav", wav(30), 30.0),
])
@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
async def test_a_header_that_claims_less_than_the_file_holds_is_not_believed(running, name, data, seconds, fmt):
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("model", "whisper")
    form.add_field("response_format", fmt)
    form.add_field("file", data, filename=name, content_type="audio/mpeg" if name.endswith("mp3") else "audio/wav")
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/audio/transcriptions", data=form, headers=bearer(DEMO)) as r:
            assert r.status == 200, await r.text()
            told = round(float(r.headers["x-tollway-cost"]) * 1_000_000)
        got = await credits(s, running, DEMO)
    [row] = await ledger_rows(running, "cost", "audio_ms")
    assert told == row["cost"] == got["spent_micro_usd"] == 5_000_000 - got["balance_micro_usd"]
    # A cent a second: billed for what the file holds (to 1%), not for what its header claims.
    assert seconds * 0.99 <= row["audio_ms"] / 1000 <= seconds * 1.01, row
    assert seconds * 0.99 * 10_000 <= told <= seconds * 1.01 * 10_000
