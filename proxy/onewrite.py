"""A whole response's head and body, written the way aiohttp writes them, without its coroutines.

aiohttp sends a ``web.Response`` in two awaited calls and seven coroutines (``prepare``,
``_start`` twice, ``_prepare_headers``, ``_prepare_hook``, ``_write_headers``,
``write_headers``, ``write_eof`` twice, ``drain``): ~7 µs a JSON answer under load, for what
is, with a bytes body, one serialization of the headers and one transport write.
``start_whole`` does those same steps in one plain call: the same headers added in the same
order (``Content-Length``, the default ``Content-Type``, ``Date``, ``Server``,
``Connection``), the head serialized by aiohttp's own serializer (so the same bytes, and the
same ``ValueError`` for a control character in a header), written with the body by the
writer's own ``_writelines`` (so the same write, and the same error on a closing transport),
and the same state left on the response and its writer; ``end_whole`` is ``write_eof``'s
end, after the caller awaited the drain ``write_eof`` awaits.

Only where each of aiohttp's steps takes its plain branch: a ``web.Response`` with a bytes
body, not started; no cookies, compression or chunking; no ``Content-Length`` header; a status
and method that may have a body (not HEAD, 1xx, 204, 304, a CONNECT's 2xx); no
``on_response_prepare`` receivers; a writer aiohttp made for the request and has not written
a head on. Anything else: ``start_whole`` returns None, having changed nothing, and the
caller sends the response through aiohttp. The steps are aiohttp 3.14's
(``tests/test_onewrite.py`` holds them to it over generated responses); under another
version ``start_whole`` always returns None.
"""

from __future__ import annotations

import asyncio
from typing import cast

import aiohttp
from aiohttp import hdrs, web
from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from aiohttp.http_writer import StreamWriter, _serialize_headers

from .heldwrites import held_writes_of

__all__ = ["AIOHTTP_314", "ENABLED", "ChunkWriter", "end_stream", "end_whole", "has_prepare_receivers",
           "head_with_first_bytes", "start_whole", "write_chunk"]

#: The aiohttp whose internals the fast paths here and in ``bodies.py`` follow (their tests hold them to it).
AIOHTTP_314 = aiohttp.__version__.split(".")[:2] == ["3", "14"]
#: The steps below are aiohttp 3.14's; off (aiohttp's own calls) under any other version.
ENABLED = AIOHTTP_314

_BODY_TYPES = (bytes, bytearray)


def has_prepare_receivers(request: web.BaseRequest) -> bool:
    """Whether an app the request was routed through has ``on_response_prepare`` receivers
    (they may change the answer's headers: the fast paths then leave it to ``prepare``)."""
    match_info = getattr(request, "_match_info", None)
    if match_info is not None:
        for app in match_info._apps:
            if app.on_response_prepare:
                return True
    return False


def start_whole(resp: web.Response, request: web.BaseRequest) -> StreamWriter | None:
    """``resp.prepare(request)`` and ``write_eof``'s write, as aiohttp does them for a
    whole bytes response; the writer to drain and pass to ``end_whole``. None when any
    step would take another branch (nothing done: send it through aiohttp)."""
    body = resp._body
    writer = request._payload_writer
    if (not ENABLED or type(resp) is not web.Response or not isinstance(body, _BODY_TYPES)
            or resp._payload_writer is not None or resp._eof_sent or resp._chunked or resp._compression
            or resp._cookies or resp._compressed_body is not None or type(writer) is not StreamWriter
            or writer._headers_buf is not None or writer._eof or writer.chunked or writer._compress is not None
            or writer._on_headers_sent is not None or writer._on_chunk_sent is not None
            or writer.on_body_write is not None):
        return None
    status = resp._status
    if must_be_empty_body(request.method, status):
        return None
    headers = resp._headers
    if hdrs.CONTENT_LENGTH in headers:
        return None
    if has_prepare_receivers(request):
        return None
    resp._must_be_empty_body = False  # (prepare)
    # Response._start
    size = len(body)
    headers[hdrs.CONTENT_LENGTH] = str(size)
    # StreamResponse._start, _prepare_headers
    resp._req = request
    resp._payload_writer = writer
    keep_alive = resp._keep_alive
    if keep_alive is None:
        keep_alive = request.keep_alive
    resp._keep_alive = keep_alive
    version = request.version
    writer.length = size
    if size:
        headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
    if hdrs.DATE not in headers:
        headers[hdrs.DATE] = rfc822_formatted_time()
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    if hdrs.CONNECTION not in headers:
        if keep_alive:
            if version == HttpVersion10:
                headers[hdrs.CONNECTION] = "keep-alive"
        elif version == HttpVersion11:
            headers[hdrs.CONNECTION] = "close"
    # _write_headers, StreamWriter.write_headers (no _prepare_hook: no receivers, checked above)
    head = _serialize_headers(f"HTTP/{version[0]}.{version[1]} {status} {resp._reason}", headers)
    # StreamWriter.write_eof -> _send_headers_with_payload
    writer._headers_written = True
    if size:
        writer._writelines((head, body))
    else:
        writer._write(head)
    return writer


def end_whole(resp: web.StreamResponse, writer: StreamWriter) -> None:
    """The end of ``write_eof`` (after its drain): the writer and the response done."""
    writer._eof = True
    resp._eof_sent = True
    resp._req = None
    resp._body_length = writer.output_size
    resp._payload_writer = None


def head_with_first_bytes(resp: web.StreamResponse) -> None:
    """Before ``prepare``: the head of this streamed answer is written with its first bytes
    (or its end), in one write, as aiohttp writes a ``web.Response``'s, instead of alone at
    ``prepare``; the same bytes. For an answer whose bytes are all here already (the
    upstream's whole answer came in): the head then waits only for the gateway's own work
    on them."""
    if ENABLED:
        resp._send_headers_immediately = False


#: aiohttp's ``StreamWriter.write`` drains (and zeroes its count) past this many buffered bytes.
_WRITE_LIMIT = 0x10000

try:  # uvloop's transports write a list of buffers with one writev, without joining them
    from uvloop.loop import TCPTransport, UnixTransport  # type: ignore[attr-defined]  # (not in its stubs)

    _WRITEV: tuple[type, ...] = (TCPTransport, UnixTransport)
except ImportError:  # pragma: no cover (uvloop is a dependency)
    _WRITEV = ()


def end_stream(resp: web.StreamResponse, parts: list[bytes], last: bytes) -> StreamWriter | None:
    """``write(part)`` for each of ``parts``, then ``write_eof(last)``, as aiohttp does them on
    a chunked stream, in one transport write: the head if it still waits
    (``head_with_first_bytes``), each part as its own chunk, ``last`` as the last chunk, and
    the terminator; the same bytes, and the same counts on the writer. The writer to drain
    and pass to ``end_whole``; None when any step would take another branch (a write that
    would drain on the way, a transport already closing: nothing done, write them through
    aiohttp).

    On uvloop's transports the frames go to ``writelines`` as they are (one ``writev``);
    aiohttp's ``_writelines`` joins them first (a copy of the whole answer) on Python
    before 3.12.9, whose asyncio ``writelines`` was unsafe (CVE-2024-12254; not uvloop's)."""
    writer = resp._payload_writer
    if (not ENABLED or type(resp) is not web.StreamResponse or resp._eof_sent or type(writer) is not StreamWriter
            or not writer.chunked or writer._eof or writer._compress is not None or writer.length is not None
            or writer._on_chunk_sent is not None or writer.on_body_write is not None):
        return None
    transport = writer.transport
    if transport is None or transport.is_closing():
        return None
    head = writer._headers_buf if writer._headers_buf and not writer._headers_written else None
    frames: list[bytes] = [head] if head else []
    buffered = writer.buffer_size
    size = len(head) if head else 0  # (the bytes of the frames so far)
    for part in parts:
        if part:  # (write(b"") writes nothing but a waiting head)
            line = b"%x\r\n" % len(part)
            frames += (line, part, b"\r\n")
            size += len(line) + len(part) + 2
            if buffered + size > _WRITE_LIMIT:
                return None
    if last:
        line = b"%x\r\n" % len(last)
        frames += (line, last, b"\r\n0\r\n\r\n")
        size += len(line) + len(last) + 7
    else:
        frames.append(b"0\r\n\r\n")
        size += 5
    if head:  # (_send_headers_with_payload)
        writer._headers_written = True
        writer._headers_buf = None
    if type(transport) in _WRITEV:  # (_writelines' counts; the transport is not closing: checked above)
        writer.buffer_size = buffered + size
        writer.output_size += size
        held = held_writes_of(writer._protocol)
        if held is not None:  # the answer's last write: at the end of the loop's pass (heldwrites.py)
            held.hold(transport.writelines, frames)
        else:
            transport.writelines(frames)
    else:
        writer._writelines(frames)
    return writer


def write_chunk(resp: web.StreamResponse, data: bytes) -> bool:
    """``await resp.write(data)`` on a chunked stream whose head is out, as aiohttp does it
    (one chunk: its size line, the data, CRLF; the same counts on the writer), in a plain
    call instead of two coroutines: True when written. False, nothing done, when any step
    would take another branch: the head still waits, the writer compresses or counts a
    length, a hook listens, the transport is closing, or the write would drain (aiohttp's
    count of bytes since its last drain would pass 64 KiB): write it through aiohttp then.
    (Nothing here waits: a write that could wait on a slow client is aiohttp's, bounded by
    ``ClientWriter``.)"""
    writer = resp._payload_writer
    if (not ENABLED or type(resp) is not web.StreamResponse or resp._eof_sent or type(writer) is not StreamWriter
            or not writer.chunked or writer._compress is not None or writer.length is not None
            or writer._on_chunk_sent is not None or writer.on_body_write is not None
            or (writer._headers_buf and not writer._headers_written) or type(data) is not bytes or not data):
        return False
    transport = writer.transport
    if transport is None or transport.is_closing():
        return False
    return _put_chunk(writer, transport, type(transport) in _WRITEV, data)


def _put_chunk(writer: StreamWriter, transport: asyncio.Transport, writev: bool, data: bytes) -> bool:
    """One chunk's frames (size line, data, CRLF) to an open transport with aiohttp's counts;
    False, nothing done, when aiohttp's write would drain (past 64 KiB since its last drain).
    ``writev``: the transport is uvloop's (``writelines`` without a join; ``_writelines``' counts)."""
    line = b"%x\r\n" % len(data)
    size = len(line) + len(data) + 2
    buffered = writer.buffer_size + size
    if buffered > _WRITE_LIMIT:
        return False
    if writev:
        writer.buffer_size = buffered
        writer.output_size += size
        transport.writelines((line, data, b"\r\n"))
    else:
        writer._writelines((line, data, b"\r\n"))
    return True


class ChunkWriter:
    """``write_chunk`` for the writes of one stream: after the first write it lets through,
    only what can change between two writes is checked again (the transport closing, the
    response ended, aiohttp's count of bytes since its last drain); what cannot (the
    response's type and writer, chunking, no compression, no length, no hooks, the head
    written) was checked by that first ``write_chunk``. ~0.6 -> ~0.4 us a write."""

    __slots__ = ("_resp", "_writer", "_transport", "_writev")

    def __init__(self, resp: web.StreamResponse) -> None:
        self._resp = resp
        # (set by the first write that went out here)
        self._writer: StreamWriter | None = None
        self._transport: asyncio.Transport
        self._writev = False

    def write(self, data: bytes) -> bool:
        """As ``write_chunk(resp, data)``: True when written; False, nothing done, when aiohttp should write it."""
        writer = self._writer
        if writer is None:
            if not write_chunk(self._resp, data):
                return False
            # (write_chunk wrote: a StreamWriter with a transport)
            self._writer = cast(StreamWriter, self._resp._payload_writer)
            self._transport = transport = cast(asyncio.Transport, self._writer.transport)
            self._writev = type(transport) in _WRITEV
            return True
        transport = self._transport
        if transport.is_closing() or self._resp._eof_sent or type(data) is not bytes or not data:
            return False
        return _put_chunk(writer, transport, self._writev, data)
