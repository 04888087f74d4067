"""A differential test of the upstream client's framing (proxy/http1.py).

The same bytes go to ``http1.Connection`` cut at random places, and whole to
two maintained parsers: llhttp as ``httptools`` exposes it, and aiohttp's
pure-Python response parser (an implementation independent of llhttp).
Generated answers cover Content-Length, chunks (extensions, trailers, upper
and lower case hex), bodies that end at the close, interim 1xx answers,
empty bodies (204, 304), HTTP/1.0 and keep-alive headers. Then each answer is
mutated (bytes inserted, deleted, replaced, lines doubled) and the verdicts
compared:

- an answer the client accepts is accepted by both references, with the same
  status, headers and body;
- every way of cutting the bytes gives the client the same verdict and body;
- the client refuses nothing llhttp accepts except what the module
  docstring lists as its own refusals.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import httptools
import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParserPy

from proxy import http1
from proxy.pool import ConnectionPool

NAMES = [b"Content-Type", b"X-Request-Id", b"openai-processing-ms", b"Retry-After", b"Set-Cookie", b"Via",
         b"x-ratelimit-remaining-requests", b"Cache-Control", b"Date", b"Server"]
VALUE_BYTES = b"abcXYZ019 -_.,;:=/\"'()[]{}\t" + bytes(range(0x80, 0x84))
BODY_BYTES = b'data: {"a":"b"}\n\r\n[DONE]xyz\x00\xff'
INSERTS = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b"0", b"f", b";", b"a", b"\xff", b"HTTP/1.1 200 OK\r\n",
           b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n"]


@dataclass
class Verdict:
    """What a reader made of the bytes: refused, or the final answer's parts."""

    refused: bool
    status: int = 0
    headers: tuple = ()
    body: bytes = b""
    reusable: bool = False


def generate(rng: random.Random) -> tuple[bytes, bool]:
    """One well-formed answer (possibly after interim ones), and whether its
    connection may be reused after it."""
    out = b""
    if rng.random() < 0.2:
        out += rng.choice([b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"])
    version = b"HTTP/1.0" if rng.random() < 0.15 else b"HTTP/1.1"
    status = rng.choice([200, 200, 200, 201, 204, 304, 400, 404, 429, 500, 503])
    reason = rng.choice([b" OK", b" Too Many Requests", b" ", b"", b" Fine\tthen"])
    head = [b"%s %d%s" % (version, status, reason)]
    for _ in range(rng.randint(0, 5)):
        value = bytes(rng.choice(VALUE_BYTES) for _ in range(rng.randint(0, 20))).strip(b" \t")
        head.append(rng.choice(NAMES) + b":" + rng.choice([b" ", b"", b"  ", b"\t"]) + value)
    connection = rng.choice([b"", b"", b"Connection: close", b"Connection: keep-alive", b"Keep-Alive: timeout=5"])
    if connection:
        head.append(connection)
    body = bytes(rng.choice(BODY_BYTES) for _ in range(rng.randint(0, 300)))
    framing = "none" if status in (204, 304) else rng.choice(
        ["length", "chunked", "close"] if version == b"HTTP/1.1" else ["length", "close"])
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        head.append(rng.choice([b"Transfer-Encoding: chunked", b"transfer-encoding: Chunked"]))
        payload = b""
        i = 0
        while i < len(body):
            n = rng.randint(1, 80)
            piece = body[i:i + n]
            size = rng.choice([b"%x", b"%X", b"0%x"]) % len(piece)
            ext = rng.choice([b"", b"", b";a=b", b";x", b';q="v"'])
            payload += size + ext + b"\r\n" + piece + b"\r\n"
            i += n
        payload += b"0\r\n" + rng.choice([b"", b"X-Trailer: t\r\n"]) + b"\r\n"
    else:
        payload = body if framing == "close" else b""
    keep = framing != "close" and connection != b"Connection: close" and (
        version == b"HTTP/1.1" or connection == b"Connection: keep-alive")
    return out + b"\r\n".join(head) + b"\r\n\r\n" + payload, keep


def mutate(raw: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(raw) + 1)
        kind = rng.random()
        if kind < 0.4:
            raw = raw[:i] + rng.choice(INSERTS) + raw[i:]
        elif kind < 0.7:
            raw = raw[:i] + raw[i + rng.randint(1, 3):]
        elif kind < 0.9:
            raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]
        else:  # a line said twice
            start = raw.rfind(b"\r\n", 0, i) + 2
            end = raw.find(b"\r\n", i)
            if 1 < start < end:
                raw = raw[:end] + b"\r\n" + raw[start:end] + raw[end:]
    return raw


def cuts(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.choice([1, 2, 3, 7, 64, len(data)])
        out.append(data[i:i + n])
        i += n
    return out


class Transport:
    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass


def client(pool: ConnectionPool, pieces: list[bytes]) -> Verdict:
    """The gateway's client fed ``pieces`` one read each, then the close."""
    conn = http1.Connection(pool, ("http", "127.0.0.1", 1))
    conn.connection_made(Transport())
    conn.send(b"")
    for piece in pieces:
        conn.data_received(piece)
        if conn._error is not None:
            return Verdict(True)
    body = conn.read_nowait()
    reusable = conn.reusable
    if not conn.complete:
        conn.connection_lost(None)  # the upstream closes: the end of a body without a length
    try:
        body += conn.read_nowait()
    except (http1.BadResponse, ConnectionError):
        return Verdict(True)
    if not conn.complete:
        return Verdict(True)
    headers = tuple((n.lower(), v.strip()) for n, v in conn.raw_headers)
    return Verdict(False, conn.status, headers, body, reusable)


class _Collect:
    def __init__(self) -> None:
        self.answers: list[Verdict] = []
        self.headers: list = []
        self.body = b""
        self.head_status = 0  # status of the answer whose head was read last

    def on_headers_complete(self) -> None:
        self.head_status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.strip()))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.answers.append(Verdict(False, self.parser.get_status_code(), tuple(self.headers), self.body))
        self.headers, self.body = [], b""


def llhttp(raw: bytes) -> Verdict:
    """httptools on the whole bytes: the first final answer (its trailers not counted)."""
    collect = _Collect()
    collect.parser = parser = httptools.HttpResponseParser(collect)
    refused = False
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError:
        refused = True
    finals = [a for a in collect.answers if a.status >= 200]
    if finals:
        return finals[0]
    if collect.head_status >= 200 and not refused:  # a body that ends at the close
        return Verdict(False, collect.head_status, tuple(collect.headers), collect.body)
    return Verdict(True)


def aiohttp_py(raw: bytes, loop: asyncio.AbstractEventLoop) -> Verdict:
    """aiohttp's pure-Python parser on the whole bytes, then the close. It is
    told to stop after one answer, as the client does (what follows is not read)."""
    parser = HttpResponseParserPy(BaseProtocol(loop), loop, 2**16, read_until_eof=True, auto_decompress=False,
                                  max_msg_queue_size=1)
    data = raw
    try:
        for _ in range(5):
            messages, _, _ = parser.feed_data(data)
            data = b""
            if not messages:
                parser.feed_eof()
                return Verdict(True)
            ((message, payload),) = messages
            if message.code >= 200:
                break
            parser.message_consumed()  # an interim answer: read on
        else:
            return Verdict(True)
        if not payload.is_eof():
            parser.feed_eof()
    except Exception:
        return Verdict(True)
    if not payload.is_eof() or payload.exception() is not None:
        return Verdict(True)
    body = b"".join(getattr(payload, "_buffer", ()))
    headers = tuple((n.lower(), v.strip()) for n, v in message.raw_headers)
    return Verdict(False, message.code, headers, body)


@pytest.mark.parametrize("seed", range(4))
async def test_the_client_agrees_with_llhttp_and_aiohttp(seed):
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    pool = ConnectionPool(4, connect_timeout=1)
    accepted_mutants = 0
    for case in range(600):
        raw, keep = generate(rng)
        mutated = case % 3 != 0
        if mutated:
            raw = mutate(raw, rng)
        verdicts = [client(pool, cuts(raw, rng)) for _ in range(3)] + [client(pool, [raw])]
        first = verdicts[0]
        for other in verdicts[1:]:  # however the bytes are cut, the same answer
            assert (other.refused, other.status, other.headers, other.body) == \
                (first.refused, first.status, first.headers, first.body), raw
        if not mutated:
            assert not first.refused, raw
        if first.refused:
            continue
        accepted_mutants += mutated
        for reference in (llhttp(raw), aiohttp_py(raw, loop)):
            assert not reference.refused, raw
            assert (reference.status, reference.body) == (first.status, first.body), raw
            assert reference.headers[:len(first.headers)] == first.headers, raw
        if not mutated:
            assert first.reusable is keep, raw
    assert accepted_mutants > 10  # the mutations are not all refused: the comparison has teeth
    await pool.close()


def test_every_refusal_of_the_client_is_llhttps_or_listed():
    """Where the client refuses what llhttp takes, it is one of the refusals the
    module docstring lists (framing llhttp leaves to its caller)."""
    own = {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nab": "Transfer-Encoding",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n": "Transfer-Encoding",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n":
            "Transfer-Encoding",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": "HTTP/1.0 with chunks",
        b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n": "bad status 99",
        b"HTTP/1.1 600 OK\r\nContent-Length: 0\r\n\r\n": "bad status 600",
        b"RTSP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n": "bad status line",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n": "unsupported version",
    }
    for raw, why in own.items():
        httptools.HttpResponseParser(object()).feed_data(raw)  # llhttp takes it
        conn_refusal = _refusal(raw)
        assert conn_refusal is not None and why in conn_refusal, (raw, conn_refusal)


def _refusal(raw: bytes) -> str | None:
    async def run() -> str | None:
        pool = ConnectionPool(4, connect_timeout=1)
        conn = http1.Connection(pool, ("http", "127.0.0.1", 1))
        conn.connection_made(Transport())
        conn.send(b"")
        conn.data_received(raw)
        await pool.close()
        return None if conn._error is None else str(conn._error)

    return asyncio.run(run())
