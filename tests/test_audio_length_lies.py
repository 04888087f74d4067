"""Audio whose own header lies about its length, sent for a transcription in a format
that carries no usage (text, srt, vtt): the gateway bills from its own measure, so
that measure must not believe a header that claims less than the file holds (a
Xing frame count of 1 in front of 26 s of MP3; a WAV data size of 1 s in front of
30 s; a FLAC STREAMINFO, an Ogg granule, an M4A mdhd of 1 s in front of 20 s). Billed
for what the file holds; told == ledger == taken. A format whose length only its header
gives is refused where the answer reports none."""

from __future__ import annotations

import struct

import aiohttp
import pytest
from aiohttp import web
from audio_files import flac, m4a, ogg_opus, ogg_speex, ogg_vorbis
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


@pytest.mark.parametrize(("name", "make", "seconds"), [
    ("lying.flac", lambda: flac(20, claimed=1), 20.0),
    ("lying.ogg", lambda: ogg_opus(20, claimed=1), 20.0),
    ("lying-vorbis.ogg", lambda: ogg_vorbis(20, claimed=1), 19.968),
    ("lying.m4a", lambda: m4a(20, claimed=1), 19.968),
    ("honest.flac", lambda: flac(20), 20.0),
    ("honest.ogg", lambda: ogg_opus(20), 20.0),
    ("honest-vorbis.ogg", lambda: ogg_vorbis(20), 19.968),
    ("honest.m4a", lambda: m4a(20), 19.968),
])
async def test_flac_ogg_and_m4a_are_billed_for_their_frames_not_their_headers(running, name, make, seconds):
    """FLAC's STREAMINFO, Ogg's last granule, M4A's mdhd and stts: each says 1 s in front of 20 s."""
    told, row, got = await _transcribe(running, name, make(), "srt")
    assert told == row["cost"] == got["spent_micro_usd"] == 5_000_000 - got["balance_micro_usd"]
    assert seconds * 0.99 <= row["audio_ms"] / 1000 <= seconds * 1.01, row
    assert seconds * 0.99 * 10_000 <= told <= seconds * 1.01 * 10_000


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
async def test_a_format_whose_length_is_only_in_its_header_is_refused_where_the_answer_reports_none(running, fmt):
    """Speex in Ogg: mutagen reads its length from the last granule (the client's word), the
    gateway counts no frame of it, and a text, srt or vtt answer reports no length: refused."""
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("model", "whisper")
    form.add_field("response_format", fmt)
    form.add_field("file", ogg_speex(10), filename="talk.spx", content_type="audio/ogg")
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/audio/transcriptions", data=form, headers=bearer(DEMO)) as r:
            assert r.status == 400
            error = (await r.json())["error"]
        got = await credits(s, running, DEMO)
    assert error["code"] == "unmeasurable_audio" and error["param"] == "response_format"
    assert "cannot count the length of 'talk.spx'" in error["message"] and "ask for json or verbose_json" in error[
        "message"]
    assert got["spent_micro_usd"] == 0


async def _transcribe(running, name: str, data: bytes, fmt: str) -> tuple[int, dict, dict]:
    """(what the client was told, the ledger row, the key's credits) of one transcription."""
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("model", "whisper")
    form.add_field("response_format", fmt)
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as s:
        async with s.post(running.url + "/audio/transcriptions", data=form, headers=bearer(DEMO)) as r:
            assert r.status == 200, await r.text()
            told = round(float(r.headers["x-tollway-cost"]) * 1_000_000)
        got = await credits(s, running, DEMO)
    [row] = await ledger_rows(running, "cost", "audio_ms")
    return told, row, got
