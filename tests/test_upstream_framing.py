"""The upstream edge through the real server: answers whose framing is
ambiguous are refused (502, the connection closed, never reused), an SSE
event without an end is bounded, the operator's headers cannot frame the
request, and a POST the upstream may have processed is never sent twice.

The upstream here is a raw TCP server that writes scripted bytes, since no
well-behaved HTTP server can be made to send these answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
import yaml
from conftest import base_config

from proxy import sse
from proxy.gateway import load_gateway
from proxy.schema import ConfigError

MESSAGES = [{"role": "user", "content": "hi"}]


def completion(text: str) -> bytes:
    return orjson.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def answer(body: bytes, extra_head: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra_head
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


HONEST = answer(completion("honest"))

Script = Callable[[int, int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class RawUpstream:
    """A TCP server that reads HTTP requests and lets ``script(connection, request,
    reader, writer)`` answer each one; the script returns False to close."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[tuple[int, int]] = []  # (connection, request on it)
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            for n in range(1, 1000):
                if not await read_request(reader):
                    return
                self.requests.append((conn, n))
                if not await self.script(conn, n, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()


async def read_request(reader: asyncio.StreamReader) -> bool:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return True


@pytest.fixture
async def raw_upstream():
    made = []

    async def make(script: Script) -> RawUpstream:
        upstream = RawUpstream(script)
        made.append(upstream)
        return upstream

    yield make
    for upstream in made:
        upstream.close()


async def gateway_on(raw_upstream, start_gateway, script: Script, headers: dict | None = None):
    """(the raw upstream, a gateway whose model ``up`` is served by it)."""
    upstream = await raw_upstream(script)
    config = base_config(await upstream.start())
    config["providers"]["up"]["headers"] = headers or {}
    return upstream, await start_gateway(config)


async def chat(url: str, **body) -> tuple[int, bytes]:
    payload = {"model": "up", "messages": MESSAGES, **body}
    async with aiohttp.ClientSession() as s, s.post(f"{url}/chat/completions", json=payload) as r:
        return r.status, await r.read()


def error_code(raw: bytes) -> str:
    return orjson.loads(raw)["error"]["code"]


async def test_two_content_lengths_cannot_smuggle_the_next_answer(raw_upstream, start_gateway):
    """Reproduces the hole: the first answer says two lengths; the bytes past the
    first length are a whole answer of their own, sent once the gateway asks again
    on that connection. Read by the first length, the connection was reused and
    the next client got the smuggled answer."""
    first = completion("first")
    smuggled = answer(completion("smuggled"))

    async def script(conn, n, reader, writer):
        if conn == 1 and n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Content-Length: %d\r\n\r\n" % (len(first), len(first) + len(smuggled)) + first)
            await writer.drain()
            if not await read_request(reader):  # the gateway asks again on this connection...
                return False
            writer.write(smuggled)  # ...and reads the rest of the first answer as the second
            return True
        writer.write(HONEST)
        return True

    upstream, running = await gateway_on(raw_upstream, start_gateway, script)
    status, raw = await chat(running.url)
    assert status == 502 and error_code(raw) == "upstream_bad_response"
    assert b"Content-Length" in raw  # says what was wrong
    status, raw = await chat(running.url)
    assert status == 200
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "honest"
    assert upstream.connections == 2  # the refused answer's connection was closed, not reused


AMBIGUOUS = {
    "content-length and transfer-encoding":
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "equal content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "xchunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n{}",
    "gzip, chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "bare LF in a chunk extension":
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\nc\r\n{}\r\n0\r\n\r\n",
    "bare LF after a chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\n{}\r\n0\r\n\r\n",
    "status 2000": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
    "status 099": b"HTTP/1.1 099 OK\r\nContent-Length: 2\r\n\r\n{}",
    "NUL in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "bare CR in a header value": b"HTTP/1.1 200 OK\r\nRetry-After: 1\r2\r\nContent-Length: 2\r\n\r\n{}",
    "obsolete line folding": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
    "not HTTP": b"RTSP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "chunked HTTP/1.0": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "space before the colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n{}",
}


@pytest.mark.parametrize("raw_answer", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
async def test_an_ambiguous_answer_is_a_502_and_its_connection_is_closed(raw_upstream, start_gateway, raw_answer):
    closed = asyncio.Event()

    async def script(conn, n, reader, writer):
        if conn == 1:
            writer.write(raw_answer)
            await writer.drain()
            await reader.read()  # until the gateway closes the connection
            closed.set()
            return False
        writer.write(HONEST)
        return True

    upstream, running = await gateway_on(raw_upstream, start_gateway, script)
    status, raw = await chat(running.url)
    assert status == 502 and error_code(raw) == "upstream_bad_response"
    async with asyncio.timeout(2):
        await closed.wait()
    assert (await chat(running.url))[0] == 200 and upstream.connections == 2


async def test_a_stream_event_without_an_end_is_bounded(raw_upstream, start_gateway, monkeypatch):
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 64 * 1024)

    async def script(conn, n, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        first = (b'data: {"id":"c","object":"chat.completion.chunk",'
                 b'"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n')
        writer.write(b"%x\r\n%s\r\n" % (len(first), first))
        piece = b'data: {"x": "' + b"a" * 4000
        for _ in range(100):  # 400 KB of one event that never ends, in many small writes
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            piece = b"a" * 4000
            await writer.drain()
        await reader.read()
        return False

    upstream, running = await gateway_on(raw_upstream, start_gateway, script)
    status, raw = await chat(running.url, stream=True)
    assert status == 200
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "upstream_event_too_large" and "65536" in error["message"]
    assert b"aaaa" not in raw  # nothing of the unfinished event went out


@pytest.mark.parametrize("replayable", [False, True])
async def test_a_request_the_upstream_may_have_processed_is_not_sent_twice(raw_upstream, start_gateway,
                                                                           replayable):
    """The upstream reads the second request on a kept-alive connection and
    closes it unanswered. A POST to a model may have run (and been billed): 502,
    sent once. With an Idempotency-Key the upstream dedupes: sent again."""

    async def script(conn, n, reader, writer):
        if conn == 1 and n == 2:
            return False  # read, then closed without a byte of answer
        writer.write(HONEST)
        return True

    headers = {"Idempotency-Key": "fixed-for-the-test"} if replayable else {}
    upstream, running = await gateway_on(raw_upstream, start_gateway, script, headers)
    assert (await chat(running.url))[0] == 200
    status, raw = await chat(running.url)
    if replayable:
        assert status == 200 and upstream.requests == [(1, 1), (1, 2), (2, 1)]
    else:
        assert status == 502 and error_code(raw) == "upstream_disconnected"
        assert upstream.requests == [(1, 1), (1, 2)]  # the upstream saw it once


@pytest.mark.parametrize("headers, message", [
    ({"Content-Length": "0"}, "providers.up.headers.Content-Length: header 'Content-Length' frames the request"),
    ({"transfer-encoding": "chunked"}, "providers.up.headers.transfer-encoding: header"),
    ({"Connection": "close"}, "providers.up.headers.Connection: header"),
    ({"Host": "elsewhere"}, "providers.up.headers.Host: header"),
    ({"X-Team": "a\r\nX-Evil: 1"}, "providers.up.headers.X-Team: header 'X-Team' has a CR, LF or NUL"),
    ({"X-Team": "a\x00"}, "providers.up.headers.X-Team: header 'X-Team' has a CR, LF or NUL"),
    ({"X Team": "a"}, "providers.up.headers.X Team: header name 'X Team' is not a valid HTTP token"),
])
def test_operator_headers_cannot_frame_the_request(tmp_path, headers, message):
    raw = base_config("http://127.0.0.1:9/v1")
    raw["providers"]["up"]["headers"] = headers
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        load_gateway(path)
    assert str(caught.value).startswith(message)
