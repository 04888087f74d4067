"""The upstream HTTP/1.1 client's wire side: one keep-alive connection on
``asyncio.Protocol``, the request's bytes and the answer's framing. The pool
of these connections is ``pool.py``.

Why not aiohttp's client (the gateway used it until the benchmark showed
the cost): a POST and its answer cost about 60 µs of CPU through aiohttp's
client on the benchmark machine, and about 17 µs through this one
(``benchmarks/RESULTS.md``). The gateway needs little of HTTP: one request
at a time per connection, a body that is already bytes, an answer read as it
arrives. So this client (this module and ``pool.py``) does:

- http and https (TLS verified against the system's certificates);
- answers framed by Content-Length, by chunks, or by the connection closing;
  1xx interim answers are skipped; bodies are not decompressed (providers
  are asked for ``Accept-Encoding: identity``);
- keep-alive: an answer read to its end gives its connection back to the
  pool; the newest idle connection is used first, and one idle longer than
  ``keepalive`` seconds is closed (``pool.py``);
- a limit on open connections; requests beyond it wait for one to free up
  (``pool.py``);
- flow control: reading pauses while more than ``HIGH_WATER`` bytes of body
  wait for a slow reader.

It does not do redirects, proxies, cookies, streamed request bodies or
pipelining: no provider API needs them.

Response headers are parsed only when asked for (``parse_headers``):
the hot path reads the status and the body, never the headers of a 200.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from .pool import Pool

HIGH_WATER = 256 * 1024
MAX_HEAD = 64 * 1024  # a response head larger than this is refused
USER_AGENT = "tollway"

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)
_HEX = b"0123456789abcdefABCDEF"

Origin = tuple[str, str, int]  # (scheme, host, port)


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before its answer ended."""


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


def encode_request(method: str, host: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    """The request's bytes: head and body, ready for one write.

    Raises ValueError for a header name or value with a line break (it would
    let a value inject headers of its own)."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
            raise ValueError(f"header {name!r} has a line break or a colon in it")
        lines.append(f"{name}: {value}\r\n")
    if body or method != "GET":
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8") + body


class Connection(asyncio.Protocol):
    """One keep-alive connection and the answer being read on it.

    The owner calls ``send`` then ``read_head``, then ``read_nowait``/``wait``
    until ``at_eof``, then gives the connection back with ``Pool.release``.
    """

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle = False  # waiting in the pool's idle list
        self.counted = True  # still counted in the pool's open connections
        self.idle_since = 0.0
        self.received = False  # any byte of the current answer arrived
        self.status = 0
        self.raw_head = b""
        self._keep_alive = True
        self._state = _DONE
        self._remaining = 0
        self._buf = bytearray()  # received bytes not parsed yet (head, chunk framing)
        self._body: list[bytes] = []  # body bytes the reader has not taken
        self._buffered = 0
        self._paused = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE  # the close is the end of this body
        elif self._state != _DONE and self._error is None:
            self._error = UpstreamClosed("the upstream closed the connection before its answer ended")
        self.wake()
        self.pool.lost(self)

    def data_received(self, data: bytes) -> None:
        self.received = True
        state = self._state
        if state == _LENGTH and not self._buf:  # the common case: body bytes, nothing to parse
            n = len(data)
            if n < self._remaining:
                self._remaining -= n
                self._push(data)
                return
            if n == self._remaining:
                self._remaining = 0
                self._push(data)
                self._finish()
                return
        elif state == _UNTIL_CLOSE:
            self._push(data)
            return
        elif state == _DONE:
            self._unsolicited()
            return
        self._buf += data
        try:
            self._parse()
        except BadResponse as exc:
            self._fail(exc)

    # -- parsing ------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        while buf:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse(f"response head larger than {MAX_HEAD} bytes")
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._read_head(head)
            elif state in (_LENGTH, _CHUNK_DATA):
                take = min(len(buf), self._remaining)
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    if state == _LENGTH:
                        self._finish()
                    else:
                        self._state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > 1024:
                        raise BadResponse("chunk size line too long")
                    return
                size = bytes(buf[:eol]).split(b";", 1)[0].strip()
                del buf[:eol + 2]
                if not size or size.strip(_HEX):
                    raise BadResponse(f"bad chunk size {size[:20]!r}")
                self._remaining = int(size, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise BadResponse("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse("trailers too long")
                    return
                del buf[:eol + 2]
                if eol == 0:
                    self._finish()
            elif state == _UNTIL_CLOSE:
                self._push(bytes(buf))
                buf.clear()
            else:  # _DONE with bytes left over: nothing asked for them
                buf.clear()
                self._unsolicited()

    def _read_head(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        status_line = head if line_end < 0 else head[:line_end]
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise BadResponse(f"bad status line {status_line[:40]!r}")
        status = int(code)
        if 100 <= status < 200:
            if status == 101:
                raise BadResponse("the upstream switched protocols")
            return  # an interim answer (103 Early Hints...): the real one follows
        self.status = status
        self.raw_head = head
        lowered = head.lower()
        if version == b"HTTP/1.0":
            self._keep_alive = b"\r\nconnection: keep-alive" in lowered
        elif b"\r\nconnection:" in lowered:
            self._keep_alive = b"close" not in _header(lowered, b"\r\nconnection:")
        if status in (204, 304):
            self._finish()
            return
        encoding = _header(lowered, b"\r\ntransfer-encoding:")
        if encoding is not None:
            if not encoding.rstrip().endswith(b"chunked"):
                self._keep_alive = False
                self._state = _UNTIL_CLOSE
                return
            self._state = _CHUNK_SIZE
            return
        length = _header(lowered, b"\r\ncontent-length:")
        if length is None:
            self._keep_alive = False
            self._state = _UNTIL_CLOSE
            return
        length = length.strip()
        if not length.isdigit():
            raise BadResponse(f"bad Content-Length {length[:20]!r}")
        self._remaining = int(length)
        if self._remaining == 0:
            self._finish()
        else:
            self._state = _LENGTH

    # -- the body, handed to the reader -------------------------------------------------
    def _push(self, data: bytes) -> None:
        if not data:
            return
        self._body.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self.wake()

    def _finish(self) -> None:
        self._state = _DONE
        self.wake()

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
        self._buf.clear()
        self._body.clear()
        self._buffered = 0
        self._error = None
        self._keep_alive = True
        self.received = False
        self.status = 0
        try:
            self.transport.write(data)
        except (RuntimeError, OSError) as exc:  # closed under us since it was picked from the pool
            self.closed = True
            raise UpstreamClosed(f"the connection closed before the request went out: {exc}") from None

    async def read_head(self) -> None:
        """Wait for the answer's status line and headers."""
        while self._state == _HEAD and self._error is None:
            await self.wait()
        if self._error is not None:
            raise self._error

    async def wait(self) -> None:
        """Wait for something new: body bytes, the end, or an error."""
        self._waiter = waiter = self.pool.loop.create_future()
        await waiter

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

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def parse_headers(raw_head: bytes) -> CIMultiDictProxy[str]:
    """The headers of a response head (status line first), case-insensitive."""
    parsed: CIMultiDict[str] = CIMultiDict()
    for line in raw_head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            parsed.add(name.strip().decode("latin-1"), value.strip().decode("latin-1"))
    return CIMultiDictProxy(parsed)


def _header(lowered_head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (``b"\\r\\nname:"``) in a lowercased head; None if absent."""
    i = lowered_head.find(name)
    if i < 0:
        return None
    start = i + len(name)
    end = lowered_head.find(b"\r\n", start)
    return lowered_head[start:end if end >= 0 else None]
