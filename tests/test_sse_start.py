"""``proxy.sse_start.start_stream`` (a streamed answer's start in one call) against aiohttp's own
``prepare``: the same state left on the response and its writer, the same head (kept for the
first bytes or written at once), the same error, and then the same bytes on the wire for the
stream's writes and its end, over generated responses and requests (header sets with
duplicates, case variants, control characters, the headers aiohttp adds given already, a
``Content-Length``, every kind of status and method, HTTP/1.0, closing connections, cookies,
compression, explicit chunking, ``on_response_prepare`` receivers, a transport already
closing); and through the server, a one-write stream and a paced one take it."""

from __future__ import annotations

import asyncio
import random

import aiohttp.web_response
import orjson
import pytest
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_writer import StreamWriter
from conftest import base_config
from multidict import CIMultiDict
from test_dispatch import exchange, post
from test_onewrite import DATE, NAMES, STATUSES, VALUES, Transport, mocked_request, state

import proxy.headshape
import proxy.sse_start
from proxy.answers import SSE_HEADERS
from proxy.sse_start import start_sse, start_stream


def case(rng: random.Random) -> dict:
    pairs = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")] if rng.random() < 0.7 else []
    for _ in range(rng.randrange(0, 10)):
        name = rng.choice(NAMES) if rng.random() < 0.7 else f"X-Extra-{rng.randrange(30)}"
        value = rng.choice(VALUES) if rng.random() < 0.8 else str(rng.randrange(10**9))
        if rng.random() < 0.85 and value in ("bad\nvalue", "nul\x00", "del\x7f", "cr\r"):
            value = "fine"
        if rng.random() < 0.8 and name in ("Content-Length", "Transfer-Encoding"):
            name = "X-Other"
        if name == "Content-Length" and rng.random() < 0.7:
            value = str(rng.randrange(0, 50))
        pairs.append((name, value))
    return {
        "method": rng.choice(["POST"] * 6 + ["GET", "HEAD", "CONNECT"]),
        "version": rng.choice([HttpVersion11] * 5 + [HttpVersion10]),
        "closing": rng.random() < 0.15,
        "request_headers": rng.choice([{}, {}, {"Accept-Encoding": "gzip"}, {"Connection": "keep-alive"}]),
        "status": rng.choice(STATUSES + [200] * 10),
        "reason": rng.choice([None] * 8 + ["Fine"]),
        "pairs": pairs,
        "multi": rng.random() < 0.3,
        "force_close": rng.random() < 0.1,
        "cookie": rng.random() < 0.05,
        "compress": rng.random() < 0.05,
        "chunked": rng.random() < 0.05,  # enable_chunked_encoding()
        "receiver": rng.random() < 0.05,
        "transport_closing": rng.random() < 0.05,
        "held": rng.random() < 0.5,  # head_with_first_bytes: the head waits for the first bytes
        "writes": [bytes([97 + rng.randrange(26)]) * rng.choice([0, 1, 30, 5000]) for _ in range(rng.randrange(3))],
        "last": rng.choice([b"", b"data: [DONE]\n\n"]),
    }


def make(c: dict) -> tuple[web.StreamResponse, web.Request, Transport, StreamWriter, list]:
    request, transport, writer, heard = mocked_request(c, asyncio.get_running_loop())
    headers = CIMultiDict(c["pairs"]) if c["multi"] else dict(c["pairs"])
    resp = web.StreamResponse(status=c["status"], reason=c["reason"], headers=headers)
    if c["force_close"]:
        resp.force_close()
    if c["cookie"]:
        resp.set_cookie("session", "abc")
    if c["compress"]:
        resp.enable_compression()
    if c["chunked"] and hdrs.CONTENT_LENGTH not in resp.headers:
        resp.enable_chunked_encoding()
    if c["held"]:
        resp._send_headers_immediately = False
    return resp, request, transport, writer, heard


async def run(c: dict, ours: bool, took: list) -> list[dict]:
    resp, request, transport, writer, heard = make(c)
    seen = []
    error = None
    try:
        if ours:
            started = start_stream(resp, request)
            took.append(started is not None)
            if started is None:
                await resp.prepare(request)
        else:
            await resp.prepare(request)
    except Exception as exc:  # noqa: BLE001 (compared: both ways must raise the same)
        error = exc
    seen.append(state(resp, writer, transport, heard, error))
    if error is None:  # then the stream itself, through aiohttp either way
        try:
            for data in c["writes"]:
                await resp.write(data)
            await resp.write_eof(c["last"])
        except Exception as exc:  # noqa: BLE001
            error = exc
        seen.append(state(resp, writer, transport, heard, error))
    return seen


@pytest.fixture
def fixed_date(monkeypatch):
    """The same Date both ways (a second may turn between the two)."""
    monkeypatch.setattr(aiohttp.web_response, "rfc822_formatted_time", lambda: DATE)
    monkeypatch.setattr(proxy.sse_start, "rfc822_formatted_time", lambda: DATE)
    monkeypatch.setattr(proxy.headshape, "rfc822_formatted_time", lambda: DATE)


async def test_start_stream_is_aiohttps_prepare(fixed_date):
    took: list[bool] = []
    rng = random.Random(1205)
    for i in range(3000):
        c = case(rng)
        theirs = await run(c, ours=False, took=[])
        mine = await run(c, ours=True, took=took)
        assert mine == theirs, (i, c)
    assert sum(took) > 1000 and not all(took)  # both ways were taken, the plain one mostly


async def test_an_sse_head_kept_for_the_first_bytes(fixed_date):
    c = {"method": "POST", "version": HttpVersion11, "closing": False, "request_headers": {}, "status": 200,
         "reason": None, "pairs": [("Content-Type", "text/event-stream"), ("X-RateLimit-Remaining-Requests", "9")],
         "multi": False, "force_close": False, "cookie": False, "compress": False, "chunked": False,
         "receiver": False, "transport_closing": False, "held": True, "writes": [], "last": b""}
    resp, request, transport, writer, _ = make(c)
    assert start_stream(resp, request) is writer
    assert transport.writes == []  # (kept for the first bytes)
    assert writer._headers_buf == (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                   b"X-RateLimit-Remaining-Requests: 9\r\nTransfer-Encoding: chunked\r\n"
                                   b"Date: " + DATE.encode() + b"\r\nServer: "
                                   + aiohttp.web_response.SERVER_SOFTWARE.encode() + b"\r\n\r\n")
    await resp.write_eof(b"data: [DONE]\n\n")
    assert len(transport.writes) == 1  # (the head with the first bytes and the end)
    assert transport.writes[0][1].replace(b"|", b"").endswith(b"\r\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")


def sse_case(rng: random.Random) -> dict:
    """A generated stream as the core starts them: a dict of headers (the SSE ones first, mostly;
    names as ``istr`` too, odd names), no reason, cookie, compression or forced close, on every
    kind of request, its head kept for the first bytes or not."""
    c = case(rng)
    pairs = list(SSE_HEADERS.items()) if rng.random() < 0.7 else []
    pairs += c["pairs"]
    if rng.random() < 0.1:
        pairs.append((rng.choice(["Ünï", "X:Y", "x-tab\t", "X Space", "x-tollway-cost"]),
                      rng.choice(["a%sb", "50%", "{x}", " ", "\t", "é"])))
    if rng.random() < 0.03:
        pairs.append(("X-Number", 5))  # (not a str: aiohttp's way)
    c.update(pairs=pairs, multi=False, reason=None, force_close=False, cookie=False, compress=False, chunked=False)
    return c


def fields(resp: web.StreamResponse) -> dict:
    """The response's own fields, besides those ``state`` compares."""
    return {k: v for k, v in resp.__dict__.items() if k not in ("_headers", "_req", "_payload_writer")}


async def then_the_stream(c: dict, resp, writer, transport, heard, error) -> list:
    seen = [state(resp, writer, transport, heard, error), fields(resp)]
    if error is None:  # then the stream itself, through aiohttp either way
        try:
            for data in c["writes"]:
                await resp.write(data)
            await resp.write_eof(c["last"])
        except Exception as exc:  # noqa: BLE001
            error = exc
        seen.append(state(resp, writer, transport, heard, error))
    return seen


async def sse_theirs(c: dict) -> list:
    """``_stream_response`` (a web.StreamResponse of the dict), held or not, started by aiohttp's prepare."""
    request, transport, writer, heard = mocked_request(c, asyncio.get_running_loop())
    resp = web.StreamResponse(status=c["status"], headers=dict(c["pairs"]))
    if c["held"]:
        resp._send_headers_immediately = False
    error = None
    try:
        await resp.prepare(request)
    except Exception as exc:  # noqa: BLE001 (compared: both ways must raise the same)
        error = exc
    return await then_the_stream(c, resp, writer, transport, heard, error)


async def sse_mine(c: dict) -> list | None:
    request, transport, writer, heard = mocked_request(c, asyncio.get_running_loop())
    before = dict(writer.__dict__)
    resp = start_sse(request, c["status"], dict(c["pairs"]), c["held"])
    if resp is None:  # declined: nothing written, nothing changed
        assert transport.writes == [] and writer.__dict__ == before
        return None
    return await then_the_stream(c, resp, writer, transport, heard, None)


async def test_start_sse_is_a_stream_response_started_by_aiohttp(fixed_date):
    rng = random.Random(1206)
    took = 0
    for i in range(3000):
        c = sse_case(rng)
        mine = await sse_mine(c)
        if mine is not None:
            took += 1
            assert mine == await sse_theirs(c), (i, c)
    assert 1000 < took < 3000  # both ways were taken, its own mostly


async def test_an_sse_head_from_the_dict(fixed_date):
    c = {"method": "POST", "version": HttpVersion11, "closing": True, "request_headers": {}, "receiver": False,
         "transport_closing": False}
    request, transport, writer, _ = mocked_request(c, asyncio.get_running_loop())
    resp = start_sse(request, 200, {**SSE_HEADERS, "x-ratelimit-remaining-requests": "9"}, held=False)
    assert resp is not None and resp._payload_writer is writer and resp.prepared and resp.keep_alive is False
    assert transport.writes == [("write", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                          b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                                          b"x-ratelimit-remaining-requests: 9\r\nTransfer-Encoding: chunked\r\n"
                                          b"Date: " + DATE.encode() + b"\r\nServer: "
                                          + aiohttp.web_response.SERVER_SOFTWARE.encode()
                                          + b"\r\nConnection: close\r\n\r\n")]
    assert resp.headers["Transfer-Encoding"] == "chunked" and resp.headers["connection"] == "close"


@pytest.mark.parametrize("mock", [{"one_write": True}, {}])
async def test_the_servers_streams_start_in_one_call(mock, start_gateway, mock_upstream, monkeypatch):
    """A one-write upstream answer and a paced one, through the server: started by ``start_sse``
    (the head from the dict), the client gets the whole stream (its usage event and its end)."""
    real = proxy.sse_start.start_sse
    took: list[bool] = []

    def counting(request, status, headers, held):
        resp = real(request, status, headers, held)
        took.append(resp is not None)
        return resp

    monkeypatch.setattr("proxy.answers.start_sse", counting)
    gw = await start_gateway(base_config(mock_upstream.url))
    body = orjson.dumps({"model": "up", "stream": True, "stream_options": {"include_usage": True},
                         "messages": [{"role": "user", "content": "hi"}], "mock": mock})
    answer, _ = await exchange(gw.server.port, post("/v1/chat/completions", body))
    cut = answer.index(b"\r\n\r\n") + 4
    head, data = answer[:cut], answer[cut:]  # (exchange's answer holds the chunks' data, not their sizes)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert b"text/event-stream" in head
    assert data.endswith(b"data: [DONE]\n\n") and b'"usage":{' in data
    assert took == [True]
