"""Images and audio: requests priced by the unit, passed to OpenAI-kind upstreams.

- ``images`` (``POST /v1/images/generations``, JSON) and ``image_edits``
  (``/v1/images/edits``, multipart): the answer's ``data`` are the images
  delivered; ``usage`` (image tokens), when the upstream reports it, is kept.
- ``speech`` (``/v1/audio/speech``, JSON in, audio bytes out): priced on the
  input's characters, known before the upstream is called; the audio is
  streamed to the client as it arrives.
- ``transcriptions`` and ``translations`` (multipart audio): priced on the
  audio's length, as the upstream reports it (``verbose_json``'s ``duration``,
  ``usage.seconds``) or else as measured from the upload (``text``, ``srt`` and
  ``vtt`` answers report nothing: those need a length the gateway counted, see
  ``audio_length``). An upload it cannot count is billed the larger of the
  report and its header, and with no report what the upload can hold
  (``plugins/accounts/units.py``, ``billed_seconds``); token usage is kept when reported.

What each unit costs is the pricing plugin's business (``call.billing.units``).
"""

from __future__ import annotations

import io
import math
import time
from typing import TYPE_CHECKING, NamedTuple

import orjson
from aiohttp import web

from .audiolength import counted_seconds
from .call import Units, Usage
from .errors import ProxyError, bad_request
from .validate import check_int, check_model, check_number

__all__ = ["MEDIA_PATHS", "UPLOAD_ENDPOINTS", "AudioLength", "audio_length", "forward_media", "measured_seconds",
           "validate_media"]

if TYPE_CHECKING:
    from .call import Call, Route
    from .gateway import Gateway
    from .uploads import Upload
    from .upstream import UpstreamResponse

#: endpoint -> the upstream path under the provider's base URL
MEDIA_PATHS = {"images": "/images/generations", "image_edits": "/images/edits", "speech": "/audio/speech",
               "transcriptions": "/audio/transcriptions", "translations": "/audio/translations"}
UPLOAD_ENDPOINTS = frozenset(("image_edits", "transcriptions", "translations"))
SPEECH_FORMATS = frozenset(("mp3", "opus", "aac", "flac", "wav", "pcm"))
TRANSCRIPT_FORMATS = frozenset(("json", "text", "srt", "verbose_json", "vtt", "diarized_json"))
MAX_SPEECH_CHARACTERS = 4096


def validate_media(endpoint: str, body: dict, upload: Upload | None = None) -> Units:
    """400 naming the field when the request is malformed; the units it asks for."""
    check_model(body)
    if endpoint in ("images", "image_edits"):
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad_request("'prompt' is required: the text describing the image", "prompt", "missing_prompt")
        n = _int_field(body, "n", 1, 10)
        _no_stream(body, "images", "the whole answer")
        for name in ("size", "quality"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise bad_request(f"'{name}' must be a string (e.g. \"1024x1024\", \"standard\")", name)
        if upload is not None:
            if upload.file("image", "image[]") is None:
                raise upload.missing_file("image", "'image' is required: the image file to edit", "missing_image")
            _not_empty(upload, "image", "image[]")
        # "auto" (the upstream picks) says nothing the gateway can price: as if not given.
        size, quality = (body.get(k) if body.get(k) != "auto" else None for k in ("size", "quality"))
        tier = f"{size}/{quality}" if size and quality else (size or (f"/{quality}" if quality else ""))
        return Units(images=n, image_tier=tier)
    if endpoint == "speech":
        text = body.get("input")
        if not isinstance(text, str) or not text:
            raise bad_request("'input' is required: the text to speak", "input", "missing_input")
        if len(text) > MAX_SPEECH_CHARACTERS:
            raise bad_request(f"'input' is longer than {MAX_SPEECH_CHARACTERS} characters", "input")
        if not isinstance(body.get("voice"), str):
            raise bad_request("'voice' is required: a voice name such as \"alloy\"", "voice", "missing_voice")
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, str) or fmt not in SPEECH_FORMATS):
            raise bad_request(f"'response_format' must be one of {', '.join(sorted(SPEECH_FORMATS))}, got {fmt!r}",
                              "response_format")
        check_number(body, "speed", 0.25, 4.0)
        return Units(characters=len(text))
    # transcriptions, translations
    assert upload is not None
    if upload.file("file") is None:
        raise upload.missing_file("file", "'file' is required: the audio file (mp3, mp4, m4a, wav, ogg, flac, webm)",
                                  "missing_file")
    if sum(f.name == "file" for f in upload.files) > 1:  # the gateway measures one; the upstream might hear another
        raise bad_request("'file' is given twice: send one audio file per request", "file")
    _not_empty(upload, "file")
    fmt = body.get("response_format", "json")
    if fmt not in TRANSCRIPT_FORMATS:
        raise bad_request(f"'response_format' must be one of {', '.join(sorted(TRANSCRIPT_FORMATS))}, got {fmt!r}",
                          "response_format")
    _number_field(body, "temperature", 0, 1)
    _no_stream(body, "transcriptions and translations", "the whole transcript")
    return Units()


def _no_stream(body: dict, what: str, instead: str) -> None:
    """400 for ``stream`` asked (true, or any multipart value but false/0): the answer would be
    events the gateway cannot price or pass on as they come (it would hold them all, then bill a
    token-priced transcript its worst case: the usage sits in the last event)."""
    value = body.get("stream")
    if value in (None, False) or (isinstance(value, str) and value.strip().lower() in ("false", "0")):
        return
    raise bad_request(f"'stream' is not served for {what} through this gateway: ask without it (or with "
                      f"stream=false) for {instead} in one answer", "stream", "stream_not_supported")


def _not_empty(upload: Upload, *names: str) -> None:
    """400 for a file part of no bytes: nothing an upstream could read (and bill)."""
    for f in upload.files:
        if f.name in names and f.size == 0:
            raise bad_request(f"{f.name!r} ({f.filename!r}) is empty: send the file's bytes", f.name, "empty_file")


def _int_field(body: dict, name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, str):  # a multipart field
        try:
            value = body[name] = int(value)
        except ValueError:
            raise bad_request(f"'{name}' must be an integer between {low} and {high}, got {value!r}", name) from None
    check_int(body, name, low, high)
    return value if isinstance(value, int) else 1


def _number_field(body: dict, name: str, low: float, high: float) -> None:
    value = body.get(name)
    if isinstance(value, str):
        try:
            body[name] = float(value)
        except ValueError:
            raise bad_request(f"'{name}' must be a number between {low:g} and {high:g}, got {value!r}",
                              name) from None
    check_number(body, name, low, high)


class AudioLength(NamedTuple):
    seconds: float | None  # None: unknown
    counted: bool  # counted from the frames (``audiolength.py``), not only read from a header


def audio_length(data: bytes) -> AudioLength:
    """The audio's length: the larger of its headers' (mutagen) and its frames' count
    where the format is counted (mp3, wav, flac, ogg opus/vorbis, mp4/m4a aac: a header
    that claims less than the file holds is not believed), else its headers' alone."""
    import mutagen

    try:
        audio = mutagen.File(io.BytesIO(data))
    except Exception:
        audio = None
    length = getattr(getattr(audio, "info", None), "length", None)
    if not (isinstance(length, (int, float)) and math.isfinite(length) and length > 0):
        length = None
    try:
        counted = counted_seconds(data)
    except Exception:  # a file no walker expected (they bound their reads): not counted, never a 500
        counted = None
    if counted is None:
        return AudioLength(None if length is None else float(length), False)
    return AudioLength(max(float(length or 0.0), counted), True)


def measured_seconds(data: bytes) -> float | None:
    """``audio_length``'s seconds: None when neither a header nor a count gives one."""
    return audio_length(data).seconds


async def forward_media(gateway: Gateway, request: web.Request, call: Call, route: Route) -> web.StreamResponse:
    from .answers import _json_response, _send, on_usage
    from .forward import open_upstream

    provider = route.provider
    units = call.billing.units or Units()
    upstream_request = provider.media_request(call, route, MEDIA_PATHS[call.endpoint])
    upstream = await open_upstream(gateway, call, route, upstream_request)
    if call.endpoint == "speech":
        return await _stream_audio(gateway, request, call, upstream)
    try:
        raw = await upstream.read_all()
    finally:
        upstream.release()
    call.timing.first_byte_at = time.perf_counter()
    content_type = upstream.headers.get("Content-Type") or "application/json"
    body: dict | None = None
    if content_type.startswith("application/json"):
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProxyError(502, f"upstream '{provider.name}' answered with invalid JSON",
                             code="upstream_bad_response") from None
        body = parsed if isinstance(parsed, dict) else None
    usage = _usage_of(body)
    if call.endpoint in ("images", "image_edits"):
        data = body.get("data") if body is not None else None
        if not isinstance(data, list):
            raise ProxyError(502, f"upstream '{provider.name}' answered without images (no 'data' list)",
                             code="upstream_bad_response")
        units.images = min(len(data), units.images)  # as delivered; never more than the n asked (and held)
    else:
        reported = _reported_seconds(body)
        if reported is not None:
            units.audio_seconds, units.audio_measured = reported, False
        # The transcript, for a count of its tokens when a model priced by them reports no output count.
        call.response.answer = body if body is not None else {"text": raw.decode("utf-8", "replace")}
    call.billing.units = units
    call.billing.usage = usage  # None: not reported (a unit price needs none; else the worst case is billed)
    await on_usage(gateway, call)
    if body is not None and isinstance(body.get("usage"), dict) and call.billing.usage_extra:
        body["usage"] = {**body["usage"], **call.billing.usage_extra}
        raw = orjson.dumps(body)
    if content_type.startswith("application/json"):
        return await _json_response(request, call, raw)
    call.response.status = 200
    resp = web.Response(status=200, body=raw, headers={**call.response.headers, "Content-Type": content_type})
    await _send(request, call, resp)
    return resp


def _usage_of(body: dict | None) -> Usage | None:
    """Token usage an images or audio answer reports (``input_tokens``/``output_tokens``);
    without ``output_tokens`` the output count is unknown (``Usage.completion_unknown``)."""
    usage = body.get("usage") if body is not None else None
    if not isinstance(usage, dict) or "input_tokens" not in usage:
        return None
    try:
        if "output_tokens" not in usage:
            return Usage(prompt_tokens=Usage.count(usage["input_tokens"]), completion_unknown=True)
        return Usage(prompt_tokens=Usage.count(usage["input_tokens"]),
                     completion_tokens=Usage.count(usage["output_tokens"]))
    except ValueError:
        return None


def _reported_seconds(body: dict | None) -> float | None:
    if body is None:
        return None
    usage = body.get("usage")
    candidates = [body.get("duration"), usage.get("seconds") if isinstance(usage, dict) else None]
    for value in candidates:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            return float(value)
    return None


async def _stream_audio(gateway: Gateway, request: web.Request, call: Call,
                        upstream: UpstreamResponse) -> web.StreamResponse:
    """Speech: priced before a byte goes out (its input is its measure), then the audio
    streamed through as the upstream sends it."""
    from .answers import before_end, on_usage
    from .clientwrite import ClientWriter

    try:
        await on_usage(gateway, call)
        headers = {**call.response.headers,
                   "Content-Type": upstream.headers.get("Content-Type") or "application/octet-stream"}
        resp = call.response.web_response = web.StreamResponse(status=200, headers=headers)
        call.response.status = 200
        try:
            await resp.prepare(request)
        except (ConnectionError, RuntimeError):
            call.response.client_gone = True
            return resp
        writer = ClientWriter(resp, request, gateway.config.server.timeouts.client_write)
        try:
            while chunk := await upstream.read_chunk():
                if call.timing.first_byte_at is None:
                    call.timing.first_byte_at = time.perf_counter()
                await writer.write(chunk, upstream.deadline)
            await before_end(gateway, call)
            await writer.write_eof()
        except ConnectionError:
            call.response.client_gone = True
        except ProxyError as err:  # the upstream broke off: the audio is cut, the request still billed
            call.response.error = err
            call.response.error_code = err.code
        return resp
    finally:
        upstream.release()
