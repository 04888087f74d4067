"""A minimal HTTP/1.1 keep-alive client on ``asyncio.Protocol``, for the load generator.

Why not aiohttp's client: the load generator shares a CPU with the mock
upstream, so every microsecond it spends is one the measurement loses. This
client sends pre-built request bytes and parses only what timing needs:
status, Content-Length or chunked framing, the arrival time of the first and
last body bytes, the number of SSE events, and the tail of the body (to check
that a stream ended with ``data: [DONE]``). One request at a time per
connection; no redirects, no TLS, no compression.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


@dataclass(slots=True)
class Result:
    """One exchange's outcome; times are ``time.perf_counter()`` seconds."""

    status: int = 0
    sent: float = 0.0
    head_at: float = 0.0  # response headers complete
    first_body_at: float = 0.0  # first body bytes (for streams: the first event)
    end_at: float = 0.0
    body_bytes: int = 0
    events: int = 0  # SSE events ("\n\n"-terminated blocks) seen
    tail: bytes = b""  # the last bytes of the body
    error: str | None = None
    cache: str | None = None  # the value of the watched response header (``Connection.watch``), if any


def build_request(url: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of ``POST url`` with a JSON ``body``."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def header_value(head: bytes, name: bytes) -> str | None:
    """The value of the header ``name`` (``b"\\r\\nNAME:"``, lowercase) in the lowercased
    response ``head``, upper-cased (``HIT``, ``SEMANTIC-HIT``...); None when absent."""
    i = head.find(name)
    if i < 0:
        return None
    j = head.find(b"\r\n", i + len(name))
    return head[i + len(name):j if j >= 0 else None].strip().decode("latin-1").upper()


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``request()`` sends and awaits a whole response."""

    def __init__(self, watch: bytes | None = None) -> None:
        # A header (lowercase name) whose value goes into Result.cache: ``x-tollway-cache``.
        self.watch = b"\r\n" + watch.lower() + b":" if watch else None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self._close_after = False
        self._result: Result | None = None
        self._waiter: asyncio.Future | None = None

    @classmethod
    async def open(cls, host: str, port: int, watch: bytes | None = None) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(watch), host, port)
        return conn

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == _UNTIL_CLOSE and self._result is not None:
            self._finish(time.perf_counter())
        elif self._waiter is not None and not self._waiter.done():
            self._result.error = "connection closed"
            self._waiter.set_result(self._result)
            self._waiter = None

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        res = self._result
        if res is None:
            return  # unsolicited bytes: ignored
        buf = self._buf
        buf += data
        if self._state == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[:end + 4]
            res.head_at = now
            try:
                res.status = int(head[9:12])
            except ValueError:
                res.error = "bad status line"
                self._abort()
                return
            self._close_after = b"\r\nconnection: close" in head
            if self.watch is not None:
                res.cache = header_value(head, self.watch)
            if b"\r\ntransfer-encoding: chunked" in head:
                self._state = _CHUNKED
            else:
                i = head.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    self._remaining = int(head[i + 17:j if j >= 0 else None])
                    self._state = _LENGTH
                else:
                    self._state = _UNTIL_CLOSE
        if self._state == _LENGTH:
            if buf and not res.first_body_at:
                res.first_body_at = now
            if len(buf) >= self._remaining:
                body = bytes(buf[:self._remaining])
                del buf[:self._remaining]
                self._body(body, now)
                self._finish(now)
        elif self._state == _CHUNKED:
            self._chunks(now)
        elif buf:
            self._body(bytes(buf), now)
            buf.clear()

    # -- parsing ------------------------------------------------------------------------
    def _chunks(self, now: float) -> None:
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            try:
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            except ValueError:
                self._result.error = "bad chunk size"
                self._abort()
                return
            if size == 0:
                if buf.find(b"\r\n\r\n", eol) < 0:
                    return
                buf.clear()
                self._finish(now)
                return
            if len(buf) < eol + 2 + size + 2:
                return
            self._body(bytes(buf[eol + 2:eol + 2 + size]), now)
            del buf[:eol + 2 + size + 2]

    def _body(self, data: bytes, now: float) -> None:
        res = self._result
        if not res.first_body_at:
            res.first_body_at = now
        res.end_at = now
        res.body_bytes += len(data)
        res.events += data.count(b"\n\n")
        res.tail = (res.tail + data)[-48:]

    def _finish(self, now: float) -> None:
        res = self._result
        res.end_at = now
        self._result = None
        self._state = _HEAD
        if self._close_after:
            self._abort()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(res)
        self._waiter = None

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- API ----------------------------------------------------------------------------
    async def request(self, payload: bytes, timeout: float) -> Result:
        """Send ``payload`` (from ``build_request``) and return the parsed response.
        Never raises for HTTP or connection failures: they land in ``Result.error``."""
        res = Result()
        if self.closed or self.transport is None:
            res.error = "connection closed"
            return res
        loop = asyncio.get_running_loop()
        self._result = res
        self._state = _HEAD
        self._buf.clear()
        self._waiter = waiter = loop.create_future()
        res.sent = time.perf_counter()
        self.transport.write(payload)
        timer = loop.call_later(timeout, self._timed_out, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _timed_out(self, waiter: asyncio.Future) -> None:
        if not waiter.done() and self._result is not None:
            res, self._result, self._waiter = self._result, None, None
            res.error = "timeout"
            self._abort()
            waiter.set_result(res)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
