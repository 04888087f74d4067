"""Header and form bytes that are not UTF-8 text, through the real server (raw requests: no
client library sends them): a 4xx in the error shape, never a 500.

aiohttp keeps a header's bytes that are not UTF-8 as lone surrogates. Before: a Content-Type
such as ``\\xff\\xfe`` on an upload route (``POST /v1/files``, the audio and image-edit uploads)
was a 500 (python-multipart encodes it as Latin-1: UnicodeEncodeError); a dashboard session
cookie holding such bytes was a 500 on every dashboard page (its digest encoded it as UTF-8), as
was an ``X-CSRF-Token`` header holding them on sign-out, and a sign-in or sign-out form body that
is not UTF-8 (aiohttp's form reader: UnicodeDecodeError). Now: 415 naming what the upload
route takes; no session (the sign-in page); 403 (wrong CSRF token); 400 "the form is not UTF-8
text"."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from business import ADMIN, DEMO, biz_config


async def raw_request(running, head: bytes, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """One request on its own connection: (status, head, body) of the answer."""
    reader, writer = await asyncio.open_connection(running.server.host, running.server.port)
    try:
        writer.write(head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        async with asyncio.timeout(30):  # a hang guard
            raw = await reader.read()
    finally:
        writer.close()
    answer_head, _, answer_body = raw.partition(b"\r\n\r\n")
    return int(answer_head.split(b" ", 2)[1]), answer_head, answer_body


@pytest.fixture
async def running(start_gateway):
    return await start_gateway(biz_config(enabled=["auth", "ratelimit", "quotas", "pricing", "ledger", "dashboard",
                                                   "batches"]))


@pytest.mark.parametrize("path", ["/v1/files", "/v1/audio/transcriptions", "/v1/images/edits"])
@pytest.mark.parametrize("content_type", [b"\xff\xfe", b"multipart/form-data; boundary=\xff", b"text/\xe2\x82\xac"])
async def test_an_upload_content_type_that_is_not_text_is_a_415(running, path, content_type):
    status, _, body = await raw_request(running, b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                                                 b"Content-Type: %s\r\n" % (path.encode(), DEMO.encode(), content_type),
                                        b"x")
    assert status == 415
    assert orjson.loads(body)["error"]["code"] == "unsupported_media_type"


async def test_dashboard_cookie_csrf_and_form_bytes_that_are_not_text(running):
    status, head, _ = await raw_request(running, b"GET /dashboard HTTP/1.1\r\nHost: x\r\n"
                                                 b"Cookie: tollway_session=\xff\xfe\r\n")
    assert status == 303 and b"/dashboard/login" in head
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as s, \
            s.post(running.root + "/dashboard/login", data={"key": ADMIN}, allow_redirects=False) as r:
        assert r.status == 303
    token = next(c.value for c in jar if c.key == "tollway_session").encode()
    status, _, body = await raw_request(running, b"POST /dashboard/logout HTTP/1.1\r\nHost: x\r\n"
                                                 b"Cookie: tollway_session=%s\r\nX-CSRF-Token: \xff\r\n" % token)
    assert status == 403 and orjson.loads(body)["error"]["code"] == "csrf_failed"
    status, _, body = await raw_request(running, b"POST /dashboard/logout HTTP/1.1\r\nHost: x\r\n"
                                                 b"Cookie: tollway_session=%s\r\n"
                                                 b"Content-Type: application/x-www-form-urlencoded\r\n" % token,
                                        b"csrf=\xff")
    assert status == 400 and orjson.loads(body)["error"]["message"] == "the form is not UTF-8 text"
    status, _, body = await raw_request(running, b"POST /dashboard/login HTTP/1.1\r\nHost: x\r\n"
                                                 b"Content-Type: application/x-www-form-urlencoded\r\n", b"key=\xff")
    assert status == 400
