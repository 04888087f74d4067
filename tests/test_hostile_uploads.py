"""Hostile multipart uploads over real sockets, on every upload endpoint (audio
transcriptions and translations, image edits, batch files): a body whose
Content-Encoding does not decode, a body that arrives too slowly, and a malformed
multipart body are each answered with a clean 4xx saying what to fix; never a
500, a traceback, or a log line per request the client can make the gateway write."""

from __future__ import annotations

import asyncio
import gzip
import logging

import orjson
import pytest
from business import DEMO, biz_config, wav

BOUNDARY = b"tollwayXbound"
PATHS = ["/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits", "/v1/files"]
DEADLINE = 60  # generous: what is checked is the answer, not how fast it comes


def part(name: bytes, value: bytes, filename: bytes | None = None) -> bytes:
    disposition = b'form-data; name="%s"' % name + (b'; filename="%s"' % filename if filename else b"")
    return b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (BOUNDARY, disposition, value)


def good_form(path: str) -> bytes:
    """A form the endpoint accepts."""
    if path.startswith("/v1/audio/"):
        parts = [part(b"model", b"whisper"), part(b"file", wav(1.0), b"a.wav")]
    elif path == "/v1/images/edits":
        parts = [part(b"model", b"img"), part(b"prompt", b"a cat"), part(b"image", b"\x89PNG\r\n", b"i.png")]
    else:
        line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}}
        parts = [part(b"purpose", b"batch"), part(b"file", orjson.dumps(line) + b"\n", b"b.jsonl")]
    return b"".join(parts) + b"--%s--\r\n" % BOUNDARY


def request(path: str, body: bytes, headers: bytes = b"", length: int | None = None) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), DEMO.encode(), BOUNDARY, len(body) if length is None else length, headers)) + body


async def answer(running, data: bytes) -> tuple[int, dict]:
    """Send ``data`` and read the one answer: its status and JSON body."""
    reader, writer = await asyncio.open_connection(running.server.host, running.server.port)
    try:
        writer.write(data)
        async with asyncio.timeout(DEADLINE):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers["content-length"]))
        return int(lines[0].split()[1]), orjson.loads(body)
    finally:
        writer.close()


@pytest.fixture
async def running(start_gateway):
    config = biz_config(enabled=["auth", "ratelimit", "quotas", "pricing", "ledger", "batches"])
    config["server"]["timeouts"] = {"body_read": 0.5}
    config["models"]["whisper"] = {"provider": "local", "price": {"input": 0, "output": 0, "audio_minute": 0.6}}
    config["models"]["img"] = {"provider": "local",
                               "price": {"input": 0, "output": 0, "images": {"1024x1024/standard": 0.04}}}
    return await start_gateway(config)


@pytest.mark.parametrize("path", PATHS)
async def test_an_upload_is_served_and_a_gzipped_one_too(running, path):
    """The control for the tests below: the same forms, well sent, are answered 200."""
    assert (await answer(running, request(path, good_form(path))))[0] == 200
    assert (await answer(running, request(path, gzip.compress(good_form(path)), b"Content-Encoding: gzip\r\n")))[0] \
        == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("path", PATHS)
async def test_an_upload_whose_content_encoding_does_not_decode_is_400(running, caplog, path, encoding):
    caplog.set_level(logging.INFO)
    header = b"Content-Encoding: %s\r\n" % encoding.encode()
    status, body = await answer(running, request(path, good_form(path), header))
    assert status == 400, body
    assert body["error"]["code"] == "invalid_body" and encoding in body["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("path", PATHS)
async def test_an_upload_that_arrives_too_slowly_is_408(running, caplog, path):
    caplog.set_level(logging.INFO)
    form = good_form(path)
    status, body = await answer(running, request(path, form[:40], length=len(form)))
    assert status == 408, body
    assert body["error"]["code"] == "body_read_timeout" and "server.timeouts.body_read" in body["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("form", [
    b"--not-the-boundary\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--not-the-boundary--\r\n",
    b"--%s\r\nno colon in this header\r\n\r\nb\r\n--%s--\r\n" % (BOUNDARY, BOUNDARY),
], ids=["wrong boundary", "header without a colon"])
async def test_a_malformed_multipart_body_is_400_and_writes_nothing_to_the_log(running, caplog, path, form):
    """The parser's complaint goes to the client; the log gets nothing a client can
    repeat at will (python-multipart warns on its own logger for each such body)."""
    caplog.set_level(logging.DEBUG)
    status, body = await answer(running, request(path, form))
    assert status == 400, body
    assert body["error"]["code"] == "invalid_multipart" and "multipart body cannot be read" in body["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


def media_form(path: str, file: bytes, filename: bytes | None = b"f.bin", model: bytes = b"") -> bytes:
    """An audio or image-edit form whose one file part is ``file``."""
    if path.startswith("/v1/audio/"):
        parts = [part(b"model", model or b"whisper"), part(b"file", file, filename)]
    else:
        parts = [part(b"model", model or b"img"), part(b"prompt", b"a cat"), part(b"image", file, filename)]
    return b"".join(parts) + b"--%s--\r\n" % BOUNDARY


@pytest.mark.parametrize("path", PATHS[:3])
@pytest.mark.parametrize(("form", "code", "says"), [
    (lambda path: media_form(path, b""), "empty_file", "is empty: send the file's bytes"),
    (lambda path: media_form(path, wav(1.0), None), "invalid_request", 'a part with a filename'),
    (lambda path: media_form(path, b"GIF89a", None), "missing_", "has no filename, so it is read as a text field"),
    (lambda path: media_form(path, wav(1.0), model=b"whis\0per"), "invalid_request", "'model' holds a NUL"),
], ids=["empty file", "binary file without a filename", "text file without a filename", "NUL in the model"])
async def test_a_media_upload_that_cannot_be_served_says_what_to_fix(running, path, form, code, says):
    status, body = await answer(running, request(path, form(path)))
    assert status == 400, body
    assert body["error"]["code"].startswith(code) and says in body["error"]["message"], body


@pytest.mark.parametrize("path", [*PATHS, "/v1/chat/completions"])
async def test_a_chunk_that_breaks_the_framing_mid_body_is_400_not_a_hang(running, path):
    """The head, then (in a later packet) a chunk size that is not hex: aiohttp queued the
    error as a next request and left the body waiting for bytes that never come, so the
    request hung past server.timeouts.body_read with its connection held."""
    reader, writer = await asyncio.open_connection(running.server.host, running.server.port)
    try:
        writer.write(b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n" % (path.encode(), DEMO.encode(),
                                                                                    BOUNDARY))
        await writer.drain()
        await asyncio.sleep(0.2)  # the head is read, and its handler waits for the body
        writer.write(b"zz\r\nabc\r\n0\r\n\r\n")
        async with asyncio.timeout(DEADLINE):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), data
    error = orjson.loads(body)["error"]
    assert error["code"] == "invalid_body" and "chunk size" in error["message"]
