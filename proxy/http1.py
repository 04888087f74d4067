"""The upstream HTTP/1.1 client's wire side: one keep-alive connection on
``asyncio.Protocol``, the request's bytes, and the answer read through llhttp
(``httptools``). The pool of these connections is ``pool.py``.

Why not aiohttp's client (the gateway used it until the benchmark showed
the cost): a POST and its answer cost several times more CPU through
aiohttp's client than through this one (``benchmarks/RESULTS.md`` has the
measurements). The gateway needs little of HTTP: one request
at a time per connection, a body that is already bytes, an answer read as it
arrives. So this client (this module and ``pool.py``) does:

- http and https (TLS verified against the system's certificates);
- answers framed by Content-Length, by chunks, or by the connection closing;
  1xx interim answers are skipped; bodies are not decompressed (providers
  are asked for ``Accept-Encoding: identity``);
- keep-alive: an answer read to its end gives its connection back to the
  pool; the newest idle connection is used first, and one idle longer than
  ``keepalive`` seconds is closed (``pool.py``); a stream whose reader is done
  before the body's end came gives it back to wait for that end (``settle``);
- a limit on open connections; requests beyond it wait for one to free up
  (``pool.py``);
- flow control: reading pauses while more than ``HIGH_WATER`` bytes of body
  wait for a slow reader.

It does not do redirects, proxies, cookies, streamed request bodies or
pipelining: no provider API needs them.

Framing is llhttp's, in its strict mode (no leniency flags), so an answer
whose length two readers could disagree on is refused, not guessed:
two Content-Length headers (equal or not), Content-Length together with
Transfer-Encoding, a bare LF where CRLF belongs (status line, headers, chunk
sizes and extensions), a NUL or a bare CR in a header, a malformed chunk size.
This module adds what llhttp leaves to its caller: a Transfer-Encoding other
than exactly ``chunked`` (llhttp would read ``xchunked`` or ``gzip`` until the
close), a chunked HTTP/1.0 answer, a status outside 100-599, a version other
than 1.0 and 1.1, a head larger than ``MAX_HEAD``, and a 101 are refused too.
A refused answer raises ``BadResponse`` (the gateway answers 502) and its
connection is closed, never reused. Bytes after the end of an answer (a
second answer nobody asked for) mark the connection not reusable.

Outgoing headers are checked the same way (``header_problem``): a name must
be an HTTP token, a value holds no CR, LF or NUL, and the headers that frame
the request (``FRAMING_HEADERS``) are this module's to write, nobody else's.

Response headers are collected as raw ``(name, value)`` pairs and made into
a case-insensitive mapping only when asked for (``parse_headers``): the hot
path reads the status and the body, never the headers of a 200.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from .pool import ConnectionPool

HIGH_WATER = 256 * 1024
#: Body bytes a settling connection (``Connection.settle``) may still receive before it is closed.
SETTLE_BYTES = 64 * 1024
MAX_HEAD = 64 * 1024  # a response head larger than this is refused
USER_AGENT = "tollway"
#: Headers that say where a request ends or what the connection does: written
#: by ``encode_request`` alone (Host, Content-Length) or never (the rest).
FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                             "proxy-connection", "upgrade", "te", "trailer", "expect"})

_HEAD, _BODY, _DONE = range(3)
#: The lengths of the names ``on_header`` reads: Transfer-Encoding, Content-Length, Keep-Alive.
_FRAMING_LENGTHS = frozenset((17, 14, 10))
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KEEPALIVE_TIMEOUT = re.compile(rb"(?i)\btimeout\s*=\s*(\d{1,6})")

Origin = tuple[str, str, int]  # (scheme, host, port)


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before its answer ended."""


class NotSent(UpstreamClosed):
    """The connection was closed before any byte of the request was written."""


class BadResponse(Exception):
    """The upstream's bytes are not an HTTP/1.x answer this client can read."""


class CannotConnect(Exception):
    """Opening the connection (TCP, TLS) failed; ``__cause__`` says why."""


class ConnectTimeout(Exception):
    """Opening the connection took longer than the connect timeout."""


def split_url(url: str) -> tuple[Origin, str, str]:
    """``(origin, host header, request target)`` of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    host_header = host if port == default else f"{host}:{port}"
    if ":" in host:  # IPv6 literal
        host_header = f"[{host}]" if port == default else f"[{host}]:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), host_header, target


def header_problem(name: str, value: str) -> str | None:
    """What is wrong with sending header ``name: value`` upstream, or None."""
    if not _TOKEN.fullmatch(name):
        return f"header name {name!r} is not a valid HTTP token"
    if name.lower() in FRAMING_HEADERS:
        return f"header {name!r} frames the request and is set by the gateway only"
    if "\r" in value or "\n" in value or "\0" in value:
        return f"header {name!r} has a CR, LF or NUL in its value"
    return None


def encode_request(method: str, host: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    """The request's bytes: head and body, ready for one write. A ``User-Agent``
    in ``headers`` replaces the gateway's.

    Raises ValueError for a header ``header_problem`` refuses (a line break
    would let a value inject headers of its own; a framing header would let
    the upstream read a different request than the one sent)."""
    key = tuple(headers.items())
    lines = _header_blocks.get(key)
    if lines is None:
        lines = _header_lines(headers)
        if len(_header_blocks) >= 256:  # providers send a handful of header sets; bound the rest
            _header_blocks.clear()
        _header_blocks[key] = lines
    length = f"Content-Length: {len(body)}\r\n" if body or method != "GET" else ""
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{lines}{length}\r\n".encode() + body


_header_blocks: dict[tuple[tuple[str, str], ...], str] = {}  # checked header sets, as head lines


def _header_lines(headers: dict[str, str]) -> str:
    lines = []
    agent = True
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem:
            raise ValueError(problem)
        if name.lower() == "user-agent":
            agent = False
        lines.append(f"{name}: {value}\r\n")
    if agent:
        lines.insert(0, f"User-Agent: {USER_AGENT}\r\n")
    return "".join(lines)


class Connection(asyncio.Protocol):
    """One keep-alive connection and the answer being read on it.

    The owner calls ``send`` then ``read_head``, then ``read_nowait``/``wait``
    until ``at_eof``, then gives the connection back with ``ConnectionPool.release``.
    The bytes are framed by llhttp (``httptools``); this class adds what llhttp
    leaves to its caller (see the module docstring) and hands the body over.
    """

    #: Set by ``connection_made``, which asyncio runs before the pool is handed the connection.
    transport: asyncio.Transport

    def __init__(self, pool: ConnectionPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.closed = False
        self.idle = False  # waiting in the pool's idle list
        self.counted = True  # still counted in the pool's open connections
        self.idle_since = 0.0
        self.keepalive = math.inf  # seconds it may stay idle, from the upstream's `Keep-Alive: timeout=N`
        self.received = False  # any byte of the current answer arrived
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []  # the answer's headers, as received
        self._parser = httptools.HttpResponseParser(self)
        self._keep_alive = True
        self._state = _DONE
        self._head_bytes = 0  # bytes received while the head was incomplete
        self._until_close = False  # the body has no length: it ends when the connection closes
        self._length = False  # a Content-Length header was seen
        self._chunked = False  # a `Transfer-Encoding: chunked` header was seen
        self._body: list[bytes] = []  # body bytes the reader has not taken
        self._buffered = 0
        self._paused = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future | None = None
        # While the pool waits for the end of an answer its reader left (``settle``): called at that end.
        self._on_end: Callable[[Connection], None] | None = None
        self._dropped = 0  # body bytes dropped while settling
        self._unsent: bytes | None = None  # the request, while it waits in the pool's HeldWrites

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == _BODY and self._until_close:
            self._state = _DONE  # the close is the end of this body
        elif self._state != _DONE and self._error is None:
            if self._unsent is not None:  # lost while its request waited to go out (``send``): never sent
                self._unsent = None
                self._error = NotSent("the connection closed before the request went out")
            else:
                self._error = UpstreamClosed("the upstream closed the connection before its answer ended")
        self.wake()
        self.pool.lost(self)

    def data_received(self, data: bytes) -> None:
        self.received = True
        state = self._state
        if state == _DONE:
            self._unsolicited()
            return
        if state == _HEAD and self._head_bytes < 5:  # llhttp also takes RTSP/ and ICE/ status lines
            start = b"HTTP/"[self._head_bytes:]
            if data[:len(start)] != start[:len(data)]:
                self._fail(BadResponse(f"bad status line {data[:40]!r}"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the upstream switched protocols"))
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BadResponse):
                self._fail(cause)
            elif self._state == _DONE:  # a second answer began after this one ended
                self._unsolicited()
            else:
                raise
            return
        except httptools.HttpParserError as exc:
            if self._state == _DONE:  # bytes after the end that are no answer at all
                self._unsolicited()
            elif isinstance(exc, httptools.HttpParserInvalidStatusError):
                self._fail(BadResponse(f"bad status line ({exc})"))
            else:
                self._fail(BadResponse(f"malformed answer ({exc})"))
            return
        if self._state == _HEAD:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail(BadResponse(f"response head larger than {MAX_HEAD} bytes"))

    # -- llhttp's callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._state == _DONE:
            raise _Unsolicited  # stop llhttp: this answer ended, nothing asked for another

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state != _HEAD:
            return  # trailers of a chunked body: read, not kept
        self.raw_headers.append((name, value))
        if len(name) in _FRAMING_LENGTHS:  # (one test for the usual header, not one for each name)
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                # llhttp frames a response by the last coding; anything but a plain
                # `chunked` is a body this client cannot frame or would pass on encoded.
                if self._chunked or value.strip().lower() != b"chunked":
                    raise BadResponse(f"unsupported Transfer-Encoding {value[:40]!r}")
                self._chunked = True
            elif lowered == b"content-length":
                self._length = True  # llhttp refuses a second one, and one with Transfer-Encoding
            elif lowered == b"keep-alive":
                found = _KEEPALIVE_TIMEOUT.search(value)
                if found:  # reuse it a second short of the upstream's limit: a request in flight as it closes is lost
                    self.keepalive = max(0.0, int(found.group(1)) - 1.0)

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            raise BadResponse(f"bad status {status}")
        version = parser.get_http_version()
        if version != "1.1" and (version != "1.0" or self._chunked):  # RFC 9112 6.1: no chunks in 1.0
            raise BadResponse(f"unsupported version HTTP/{version}" + (" with chunks" if self._chunked else ""))
        if status < 200:
            if status == 101:
                raise BadResponse("the upstream switched protocols")
            return  # an interim answer (103 Early Hints...): the real one follows
        self.status = status
        self._keep_alive = parser.should_keep_alive()
        self._state = _BODY
        self._until_close = not (self._length or self._chunked) and status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if self._on_end is not None:  # settling: the reader left; the rest is only counted
            self._dropped += len(body)
            if self._dropped > SETTLE_BYTES:
                self._fail(UpstreamClosed(f"more than {SETTLE_BYTES} bytes came after its reader left"))
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self.wake()

    def on_message_complete(self) -> None:
        if self._state == _HEAD:  # the end of an interim answer
            self.raw_headers = []
            self._length = self._chunked = False
            return
        self._state = _DONE
        self.wake()
        on_end = self._on_end
        if on_end is not None:
            self._on_end = None
            on_end(self)

    # -- inside -------------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        self._error = exc
        self._keep_alive = False
        self.wake()
        self.abort()

    def _unsolicited(self) -> None:
        # Bytes after the answer ended (or on an idle connection): the stream
        # cannot be trusted for another request.
        self._keep_alive = False
        if self.idle:
            self.abort()

    def wake(self) -> None:
        """Wake the waiting reader (new bytes, the end, an error, or its own timer)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the owner's side ---------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Start a request: reset the answer's state and write ``data``."""
        self._state = _HEAD
        self._head_bytes = 0
        self._length = self._chunked = self._until_close = False
        self.raw_headers = []
        self._body.clear()
        self._buffered = 0
        self._error = None
        self._keep_alive = True
        self.received = False
        self.status = 0
        held = self.pool.held_writes
        if held is not None and not self.closed and not self.transport.is_closing():
            # written at the end of the loop's pass, with the other writes of that pass (heldwrites.py);
            # lost before then, it is NotSent (connection_lost)
            self._unsent = data
            held.hold(self._write_held, data)
            return
        try:
            self.transport.write(data)
        except (RuntimeError, OSError) as exc:  # closed under us since it was picked from the pool
            self.closed = True
            raise NotSent(f"the connection closed before the request went out: {exc}") from None

    def _write_held(self, data: bytes) -> None:
        """``send``'s write, made by the pool's ``HeldWrites``; not on a connection closing meanwhile
        (the upstream's close came first: ``connection_lost`` makes it NotSent, and the pool sends
        the request on another connection)."""
        if self._unsent is data and not self.transport.is_closing():
            self._unsent = None
            self.transport.write(data)

    async def read_head(self) -> None:
        """Wait for the answer's status line and headers."""
        while self.reading_head():
            await self.wait()

    def reading_head(self) -> bool:
        """The answer's head has not all arrived (True: ``wait``, then ask again); raises
        the connection's error, if any. (``ConnectionPool.request`` loops on it.)"""
        if self._error is not None:
            raise self._error
        return self._state == _HEAD

    def wait(self) -> asyncio.Future[None]:
        """Awaited: something new came (body bytes, the end, or an error). (The future
        itself, not a coroutine around it: a coroutine less per wait.)"""
        self._waiter = waiter = self.pool.loop.create_future()
        return waiter

    def read_nowait(self) -> bytes:
        """Body bytes that have arrived and not been read (b"" if none); raises
        the connection's error once they are all read."""
        body = self._body
        if body:
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            self._buffered = 0
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        return b""

    def at_eof(self) -> bool:
        """The whole body arrived and was read."""
        return self._state == _DONE and not self._body

    @property
    def complete(self) -> bool:
        """The whole body arrived (it may not have been read yet)."""
        return self._state == _DONE

    @property
    def reusable(self) -> bool:
        return self._state == _DONE and self._keep_alive and not self.closed and self._error is None

    def can_settle(self) -> bool:
        """Whether ``settle`` may wait for this answer's end: a body framed by its length or
        its chunks, still being read on an open, keep-alive connection, with no error."""
        return (self._state == _BODY and not self._until_close and self._keep_alive and not self.closed
                and self._error is None)

    def settle(self, on_end: Callable[[Connection], None]) -> None:
        """The reader is done with this answer before its end arrived (a stream's last
        event came before the body's terminator): drop what is left of the body as it
        comes, at most ``SETTLE_BYTES``, and call ``on_end(self)`` when it has all come."""
        self._on_end = on_end
        self._dropped = 0
        self._body.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self._on_end = None  # (a settling connection closed by the pool: no end to report)
        self.closed = True
        transport = getattr(self, "transport", None)  # None: never connected
        if transport is not None:
            transport.abort()


class _Unsolicited(Exception):
    """Raised inside llhttp's callback to stop it at a second answer."""


def parse_headers(raw_headers: list[tuple[bytes, bytes]]) -> CIMultiDictProxy[str]:
    """The headers of an answer (``Connection.raw_headers``), case-insensitive."""
    parsed: CIMultiDict[str] = CIMultiDict()
    for name, value in raw_headers:
        parsed.add(name.decode("latin-1"), value.strip().decode("latin-1"))
    return CIMultiDictProxy(parsed)
