"""The mock provider's images and audio: deterministic answers, no network.

Images: one 1x1 PNG per image asked (``n``). Speech: bytes derived from the
input, in 1 KiB chunks (100 bytes per character), as ``audio/mpeg``.
Transcriptions and translations: ``mock transcript of FILENAME``, with the
audio's length as the gateway measures it (1 second when it cannot), in each
response format (json, verbose_json with ``duration``, text, srt, vtt).
"""

from __future__ import annotations

import hashlib
import time

import orjson

from proxy import UpstreamRequest
from proxy.media import measured_seconds
from proxy.uploads import parse_upload

PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def mock_media(path: str, request: UpstreamRequest) -> tuple[list[bytes], str]:
    """(answer parts, content type) for ``path`` (e.g. ``/images/generations``)."""
    if path.startswith("/images/"):
        if path.endswith("/edits"):
            fields = parse_upload(request.body, request.headers["Content-Type"]).fields
        else:
            fields = orjson.loads(request.body)
        n = int(fields.get("n") or 1)
        data = [{"b64_json": PNG_1X1, "revised_prompt": fields.get("prompt")} for _ in range(n)]
        return [orjson.dumps({"created": int(time.time()), "data": data})], "application/json"
    if path == "/audio/speech":
        text = orjson.loads(request.body).get("input", "")
        seed = hashlib.sha256(text.encode()).digest()
        audio = (b"ID3" + seed * (len(text) * 100 // len(seed) + 1))[:len(text) * 100]
        return [audio[i:i + 1024] for i in range(0, len(audio), 1024)], "audio/mpeg"
    upload = parse_upload(request.body, request.headers["Content-Type"])
    audio_file = upload.file("file")
    assert audio_file is not None
    seconds = measured_seconds(request.body[audio_file.start:audio_file.end]) or 1.0
    text = f"mock transcript of {audio_file.filename}"
    fmt = upload.fields.get("response_format", "json")
    if fmt == "text":
        return [text.encode() + b"\n"], "text/plain"
    stamp = _stamp(seconds)
    if fmt == "srt":
        return [f"1\n00:00:00,000 --> {stamp.replace('.', ',')}\n{text}\n\n".encode()], "text/plain"
    if fmt == "vtt":
        return [f"WEBVTT\n\n00:00:00.000 --> {stamp}\n{text}\n\n".encode()], "text/vtt"
    if fmt == "verbose_json":
        return [orjson.dumps({"task": "transcribe", "language": "english", "duration": seconds, "text": text,
                              "segments": [{"id": 0, "start": 0.0, "end": seconds, "text": text}]})], \
            "application/json"
    return [orjson.dumps({"text": text, "usage": {"type": "duration", "seconds": round(seconds)}})], "application/json"


def _stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"
