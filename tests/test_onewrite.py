"""``proxy.onewrite`` (a whole response in one call) against aiohttp's own ``prepare`` +
``write_eof``: the same bytes on the wire, in the same writes, the same error, and the same
state left on the response and its writer, over generated responses and requests (header
sets with duplicates, case variants, non-ASCII and control characters, the headers aiohttp
adds given already, every kind of status and method, HTTP/1.0, closing connections,
cookies, compression, ``on_response_prepare`` receivers, a transport already closing)."""

from __future__ import annotations

import asyncio
import random

import aiohttp.web_response
import pytest
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

import proxy.onewrite
from proxy.clientwrite import send_whole
from proxy.onewrite import start_whole

DATE = "Fri, 04 Dec 2026 21:00:00 GMT"


class Transport:
    """Records every write (which call, which bytes)."""

    def __init__(self, closing: bool = False) -> None:
        self.writes: list[tuple[str, bytes]] = []
        self.closing = closing

    def write(self, data: bytes) -> None:
        self.writes.append(("write", bytes(data)))

    def writelines(self, chunks) -> None:
        self.writes.append(("writelines", b"|".join(bytes(c) for c in chunks)))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def get_extra_info(self, name: str, default=None):
        return default


class Protocol:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._paused = False
        self.ssl_context = self.peername = self.sockname = None


NAMES = ["X-RateLimit-Limit-Requests", "x-ratelimit-remaining-tokens", "Retry-After", "Content-Type",
         "content-type", "Date", "Server", "Connection", "X-Request-Id", "Allow", "Content-Length",
         "Transfer-Encoding", "Cache-Control", "X-Tollway-Cost"]
VALUES = ["application/json", "100", "0", "close", "keep-alive", "text/plain; charset=utf-8", "", "é ☃ 价格",
          "a\tb", "2026-12-04T21:00:00Z", "bad\nvalue", "nul\x00", "del\x7f", "cr\r", "Mon, 01 Jan 2024 00:00:00 GMT"]
STATUSES = [200, 200, 200, 201, 400, 401, 404, 405, 408, 413, 415, 429, 431, 499, 500, 502, 503, 504, 599,
            204, 304, 100, 101, 299]


def case(rng: random.Random) -> dict:
    pairs = []
    for _ in range(rng.randrange(0, 12)):
        name = rng.choice(NAMES) if rng.random() < 0.7 else f"X-Extra-{rng.randrange(30)}"
        value = rng.choice(VALUES) if rng.random() < 0.8 else str(rng.randrange(10**9))
        if rng.random() < 0.85 and value in ("bad\nvalue", "nul\x00", "del\x7f", "cr\r"):
            value = "fine"  # (mostly valid headers: the interesting path is the one that writes)
        if rng.random() < 0.9 and name in ("Content-Length", "Transfer-Encoding"):
            name = "X-Other"
        pairs.append((name, value))
    size = rng.choice([0, 1, 17, 300, 2047, 2048, 5000, 20000])
    return {
        "method": rng.choice(["POST"] * 6 + ["GET", "HEAD", "CONNECT", "DELETE"]),
        "version": rng.choice([HttpVersion11] * 4 + [HttpVersion10]),
        "closing": rng.random() < 0.15,
        "request_headers": rng.choice([{}, {}, {"Accept-Encoding": "gzip"}, {"Connection": "keep-alive"}]),
        "status": rng.choice(STATUSES),
        "reason": rng.choice([None] * 8 + ["Fine", "Not Really"]),
        "pairs": pairs,
        "multi": rng.random() < 0.3,  # a CIMultiDict (duplicate names kept) instead of a dict
        "content_type": rng.random() < 0.8,
        "body": rng.randbytes(size) if rng.random() < 0.5 else b"x" * size,
        "bytearray": rng.random() < 0.1,
        "no_body": rng.random() < 0.05,
        "force_close": rng.random() < 0.15,
        "cookie": rng.random() < 0.05,
        "compress": rng.random() < 0.05,
        "receiver": rng.random() < 0.05,
        "transport_closing": rng.random() < 0.05,
    }


def mocked_request(c: dict, loop) -> tuple[web.Request, Transport, StreamWriter, list]:
    """A request of case ``c`` on a recording transport, and the statuses its app's
    on_response_prepare receiver (when ``c["receiver"]``) heard."""
    transport = Transport(c["transport_closing"])
    protocol = Protocol(transport)
    app = web.Application()
    heard: list = []
    if c["receiver"]:
        async def receiver(request, response):
            heard.append(response.status)
            response.headers["X-Heard"] = "1"

        app.on_response_prepare.append(receiver)
    writer = StreamWriter(protocol, loop)
    request = make_mocked_request(c["method"], "/v1/chat/completions", c["request_headers"], version=c["version"],
                                  closing=c["closing"], app=app, writer=writer, protocol=protocol,
                                  transport=transport)
    return request, transport, writer, heard


def make(c: dict, loop) -> tuple[web.Response, web.Request, Transport, StreamWriter, list]:
    request, transport, writer, heard = mocked_request(c, loop)
    headers = CIMultiDict(c["pairs"]) if c["multi"] else dict(c["pairs"])
    if c["content_type"]:
        headers = {**headers, hdrs.CONTENT_TYPE: "application/json"} if not c["multi"] else headers
        if c["multi"]:
            headers.add(hdrs.CONTENT_TYPE, "application/json")
    body = None if c["no_body"] else (bytearray(c["body"]) if c["bytearray"] else c["body"])
    resp = web.Response(status=c["status"], reason=c["reason"], body=body, headers=headers)
    if c["force_close"]:
        resp.force_close()
    if c["cookie"]:
        resp.set_cookie("session", "abc")
    if c["compress"]:
        resp.enable_compression()
    return resp, request, transport, writer, heard


def state(resp: web.StreamResponse, writer: StreamWriter, transport: Transport, heard: list, error) -> dict:
    """What a start (and end) left: the writes, the response's and the writer's fields."""
    return {
        "error": (type(error), str(error)) if error is not None else None,
        "writes": list(transport.writes),
        "status": resp.status, "reason": resp.reason, "keep_alive": resp.keep_alive, "prepared": resp.prepared,
        "eof_sent": resp._eof_sent, "body_length": resp.body_length, "empty": resp._must_be_empty_body,
        "req": resp._req is not None, "payload_writer": resp._payload_writer is not None,
        "headers": list(resp.headers.items()),
        "output_size": writer.output_size, "buffer_size": writer.buffer_size, "eof": writer._eof,
        "length": writer.length, "chunked": writer.chunked, "headers_buf": writer._headers_buf,
        "headers_written": writer._headers_written, "heard": heard,
    }


async def run(c: dict, ours: bool) -> dict:
    import asyncio

    resp, request, transport, writer, heard = make(c, asyncio.get_running_loop())
    error = None
    try:
        if ours:
            await send_whole(resp, request, 30.0)
        else:
            await resp.prepare(request)
            await resp.write_eof()
    except Exception as exc:  # noqa: BLE001 (compared: both ways must raise the same)
        error = exc
    return state(resp, writer, transport, heard, error)


@pytest.fixture
def fixed_date(monkeypatch):
    """The same Date both ways (a second may turn between the two)."""
    monkeypatch.setattr(aiohttp.web_response, "rfc822_formatted_time", lambda: DATE)
    monkeypatch.setattr(proxy.onewrite, "rfc822_formatted_time", lambda: DATE)


async def test_one_write_is_aiohttps_write(fixed_date, monkeypatch):
    took = []
    real = proxy.onewrite.start_whole

    def counting(resp, request):
        writer = real(resp, request)
        took.append(writer is not None)
        return writer

    monkeypatch.setattr("proxy.clientwrite.start_whole", counting)
    rng = random.Random(1204)
    for i in range(3000):
        c = case(rng)
        theirs = await run(c, ours=False)
        mine = await run(c, ours=True)
        assert mine == theirs, (i, c)
    assert sum(took) > 1000 and not all(took)  # both ways were taken, the one write mostly


async def test_a_plain_json_answer_takes_the_one_write(fixed_date):
    import asyncio

    c = {"method": "POST", "version": HttpVersion11, "closing": False, "request_headers": {}, "status": 200,
         "reason": None, "pairs": [("X-RateLimit-Remaining-Requests", "99")], "multi": False, "content_type": True,
         "body": b'{"ok":true}', "bytearray": False, "no_body": False, "force_close": False, "cookie": False,
         "compress": False, "receiver": False, "transport_closing": False}
    resp, request, transport, writer, _ = make(c, asyncio.get_running_loop())
    assert start_whole(resp, request) is writer
    assert transport.writes == [("write", b"HTTP/1.1 200 OK\r\nX-RateLimit-Remaining-Requests: 99\r\n"
                                          b"Content-Type: application/json\r\nContent-Length: 11\r\n"
                                          b"Date: " + DATE.encode() + b"\r\nServer: "
                                 + aiohttp.web_response.SERVER_SOFTWARE.encode() + b"\r\n\r\n{\"ok\":true}")]


@pytest.mark.parametrize("version", [HttpVersion11, HttpVersion10])
@pytest.mark.parametrize("tail", [b"", b"data: {\"usage\":1}\n\ndata: [DONE]\n\n", b"x" * 5000])
async def test_a_streams_tail_and_its_end_in_one_write(version, tail, fixed_date):
    """``ClientWriter.write_eof(tail)`` (the end of ``pump``): the bytes of aiohttp's
    ``write(tail)`` then ``write_eof()``, in one transport write."""
    import asyncio

    from proxy.clientwrite import ClientWriter

    sent = []
    for together in (False, True):
        c = {"method": "POST", "version": version, "closing": False, "request_headers": {}, "status": 200,
             "reason": None, "pairs": [], "multi": False, "content_type": False, "body": b"", "bytearray": False,
             "no_body": True, "force_close": False, "cookie": False, "compress": False, "receiver": False,
             "transport_closing": False}
        _, request, transport, writer, _ = make(c, asyncio.get_running_loop())
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        if together:
            await ClientWriter(resp, request, 30.0).write_eof(tail)
        else:
            await resp.write(tail)
            await resp.write_eof()
        sent.append((transport.writes, resp.prepared, resp._eof_sent, writer.output_size, writer._eof))
    apart, together = sent
    assert b"".join(w for _, w in together[0]).replace(b"|", b"") == b"".join(w for _, w in apart[0]).replace(b"|", b"")
    assert together[1:] == apart[1:]
    # (HTTP/1.0: no chunks, so no terminator to write)
    assert len(together[0]) == len(apart[0]) - (1 if tail and version == HttpVersion11 else 0)


async def prepared_stream(version: HttpVersion, waits: bool) -> tuple:
    """A prepared SSE response on a mocked transport: (request, transport, writer, response)."""
    c = {"method": "POST", "version": version, "closing": False, "request_headers": {}, "status": 200,
         "reason": None, "pairs": [], "multi": False, "content_type": False, "body": b"",
         "bytearray": False, "no_body": True, "force_close": False, "cookie": False, "compress": False,
         "receiver": False, "transport_closing": False}
    _, request, transport, writer, _ = make(c, asyncio.get_running_loop())
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    if waits:
        resp._send_headers_immediately = False
    await resp.prepare(request)
    return request, transport, writer, resp


@pytest.mark.parametrize("writev", [False, True])
async def test_a_streams_held_bytes_and_its_end_in_one_write(fixed_date, monkeypatch, writev):
    """``ClientWriter.write_all_eof(parts, last)`` (the end of ``pump`` for an upstream answer
    that was all in) against aiohttp's ``write(part)`` for each part then ``write_eof(last)``:
    the same bytes, the same error, the same counts and state, over generated streams (a head
    still waiting or sent, parts large enough to make aiohttp drain on the way, HTTP/1.0, a
    closing transport); one transport write where it could be. ``writev``: the transport is
    one ``end_stream`` hands its frames to as they are (uvloop's), not through aiohttp's join."""

    from proxy.clientwrite import ClientWriter

    monkeypatch.setattr(proxy.onewrite, "_WRITEV", (Transport,) if writev else ())

    rng = random.Random(1206)
    single = handed = 0
    for i in range(2000):
        version = HttpVersion11 if rng.random() < 0.85 else HttpVersion10
        waits = rng.random() < 0.6
        closing = rng.random() < 0.05
        before = rng.choice([b"", b"", b"data: early\n\n", b"y" * 30000])
        parts = [bytes([65 + rng.randrange(26)]) * rng.choice([0, 1, 40, 700, 3000, 25000])
                 for _ in range(rng.choice([0, 1, 1, 2, 3, 5]))]
        last = rng.choice([b"", b"data: [DONE]\n\n", b"z" * 5000])
        seen = []
        for ours in (False, True):
            request, transport, writer, resp = await prepared_stream(version, waits)
            if before:
                await resp.write(before)
            transport.writes.clear()
            transport.closing = closing
            error = None
            try:
                if ours:
                    await ClientWriter(resp, request, 30.0).write_all_eof(parts, last)
                else:
                    for part in parts:
                        await resp.write(part)
                    await resp.write_eof(last)
            except Exception as exc:  # noqa: BLE001 (compared: both ways must raise the same)
                error = (type(exc), str(exc))
            seen.append({"bytes": b"".join(w for _, w in transport.writes).replace(b"|", b""), "error": error,
                         "prepared": resp.prepared, "eof_sent": resp._eof_sent, "body_length": resp.body_length,
                         "req": resp._req is not None, "payload_writer": resp._payload_writer is not None,
                         "output_size": writer.output_size, "buffer_size": writer.buffer_size, "eof": writer._eof,
                         "headers_buf": writer._headers_buf, "headers_written": writer._headers_written,
                         "writes": len(transport.writes),
                         "writelines": sum(kind == "writelines" for kind, _ in transport.writes)})
        theirs, mine = seen
        single += mine["writes"] == 1 and theirs["writes"] > 1
        mine_writes, theirs_writes = mine.pop("writes"), theirs.pop("writes")
        handed += mine.pop("writelines")
        theirs.pop("writelines")
        assert mine == theirs, (i, version, waits, closing, len(before), [len(p) for p in parts], len(last))
        assert mine_writes <= theirs_writes
    assert single > 400
    assert (handed > 400) if writev else (handed == 0)


@pytest.mark.parametrize("writev", [False, True])
@pytest.mark.parametrize("per_stream", [False, True], ids=["write_chunk", "ChunkWriter"])
async def test_a_streams_chunks_written_in_a_plain_call(fixed_date, monkeypatch, writev, per_stream):
    """``write_chunk(resp, part) or await resp.write(part)`` (and the same with one
    ``ChunkWriter(resp)`` for the stream: ``pump``'s write of each part of a paced stream)
    against aiohttp's ``await resp.write(part)`` for each part, then ``write_eof``: the same
    bytes, the same error, the same counts and state, over generated streams (a head still
    waiting, parts that make aiohttp drain, bytearrays, empty parts, HTTP/1.0, a transport
    closing on the way, a write after the end); the plain call where aiohttp's write would
    not wait."""

    from proxy.onewrite import ChunkWriter, write_chunk

    monkeypatch.setattr(proxy.onewrite, "_WRITEV", (Transport,) if writev else ())
    rng = random.Random(1207)
    plain = 0
    for i in range(2000):
        version = HttpVersion11 if rng.random() < 0.85 else HttpVersion10
        waits = rng.random() < 0.1
        closing_at = rng.choice([None] * 9 + [rng.randrange(4)])
        parts = [rng.choice([b"", b"data: x\n\n", bytes([65 + rng.randrange(26)]) * rng.choice([1, 300, 3000, 30000]),
                             bytearray(b"data: b\n\n")])
                 for _ in range(rng.randint(1, 8))]
        after_end = rng.random() < 0.05
        seen = []
        for ours in (False, True):
            request, transport, writer, resp = await prepared_stream(version, waits)
            write = ChunkWriter(resp).write if per_stream else lambda data, resp=resp: write_chunk(resp, data)
            took = 0
            error = None
            try:
                for n, part in enumerate(parts):
                    transport.closing = closing_at is not None and n >= closing_at
                    if ours and write(part):
                        took += 1
                    else:
                        await resp.write(part)
                await resp.write_eof()
                if after_end and not (ours and write(b"late")):
                    await resp.write(b"late")
            except Exception as exc:  # noqa: BLE001 (compared: both ways must raise the same)
                error = (type(exc), str(exc))
            seen.append({"bytes": b"".join(w for _, w in transport.writes).replace(b"|", b""), "error": error,
                         "eof_sent": resp._eof_sent, "output_size": writer.output_size,
                         "buffer_size": writer.buffer_size, "eof": writer._eof, "headers_buf": writer._headers_buf,
                         "headers_written": writer._headers_written, "writes": len(transport.writes)})
        theirs, mine = seen
        plain += took
        assert mine == theirs, (i, version, waits, closing_at, [len(p) for p in parts], after_end)
    assert plain > 3000
