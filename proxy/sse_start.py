"""A streamed answer's start (aiohttp's ``StreamResponse.prepare``), in one plain call.

aiohttp starts a ``web.StreamResponse`` in six coroutines (``prepare``, ``_start``,
``_prepare_headers``, ``_prepare_hook``, ``_write_headers``, ``write_headers``) and ~280
bytecodes for what is, for an SSE answer, a few headers added and one serialization of the
head: ~9k instructions a stream on Python 3.11. ``start_stream`` does those same steps in
one call, as ``onewrite.start_whole`` does for a whole response: the same headers added in
the same order (``Transfer-Encoding: chunked``, the default ``Content-Type``, ``Date``,
``Server``, ``Connection``), the head serialized by aiohttp's own serializer (the same
bytes, the same ``ValueError`` for a control character in a header), kept on the writer or
written at once by the writer's own ``send_headers`` as ``_send_headers_immediately`` says
(``onewrite.head_with_first_bytes``), and the same state left on the response and its writer.

Only where each of aiohttp's steps takes its plain branch: a ``web.StreamResponse`` (not a
subclass) not started, over HTTP/1.1; no cookies, compression, explicit chunking or
``Content-Length`` header; a status and method that may have a body; no
``on_response_prepare`` receivers; a writer aiohttp made for the request and has not written
a head on. Anything else: ``start_stream`` returns None, having changed nothing, and the caller
awaits ``resp.prepare(request)``. The steps are aiohttp 3.14's (``tests/test_sse_start.py``
holds them to it over generated responses); under another version it always returns None.

``start_sse`` goes one step further for the core's own streams, whose headers are a plain dict:
it builds the ``web.StreamResponse`` that dict would make and starts it as ``start_stream`` does,
its head written from the dict with the text kept per order of names (``headshape``, as
``wholeanswer`` writes a JSON answer's) instead of through aiohttp's serializer, a character at a
time (~12k instructions a stream of tollway-full's ~15 headers).
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_writer import StreamWriter, _serialize_headers
from aiohttp.web_response import REASON_PHRASES
from multidict import CIMultiDict

from . import onewrite
from .headshape import shape_and_values
from .onewrite import has_prepare_receivers

__all__ = ["start_sse", "start_stream"]


def start_stream(resp: web.StreamResponse, request: web.BaseRequest) -> StreamWriter | None:
    """``await resp.prepare(request)`` as aiohttp does it for a chunked stream; the writer.
    None when any step would take another branch (nothing done: await ``prepare``)."""
    writer = request._payload_writer
    if (not onewrite.ENABLED or type(resp) is not web.StreamResponse or resp._payload_writer is not None
            or resp._eof_sent or resp._chunked or resp._compression or resp._cookies or not resp._length_check
            or type(writer) is not StreamWriter or writer._headers_buf is not None or writer._eof
            or writer.chunked or writer._compress is not None or writer._on_headers_sent is not None):
        return None
    status = resp._status
    version = request.version
    headers = resp._headers
    if version != HttpVersion11 or must_be_empty_body(request.method, status) or hdrs.CONTENT_LENGTH in headers:
        return None
    if has_prepare_receivers(request):
        return None
    resp._must_be_empty_body = False  # (prepare)
    # _start
    resp._req = request
    resp._payload_writer = writer
    # _prepare_headers: no Content-Length over HTTP/1.1, so chunks
    keep_alive = resp._keep_alive
    if keep_alive is None:
        keep_alive = request.keep_alive
    resp._keep_alive = keep_alive
    writer.length = None
    writer.chunked = True  # (enable_chunking)
    headers[hdrs.TRANSFER_ENCODING] = "chunked"
    headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
    if hdrs.DATE not in headers:
        headers[hdrs.DATE] = rfc822_formatted_time()
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    if hdrs.CONNECTION not in headers and not keep_alive:
        headers[hdrs.CONNECTION] = "close"
    # _write_headers, StreamWriter.write_headers (no _prepare_hook: no receivers, checked above)
    writer._headers_buf = _serialize_headers(f"HTTP/1.1 {status} {resp._reason}", headers)
    writer._headers_written = False
    if resp._send_headers_immediately:
        writer.send_headers()
    return writer


def start_sse(request: web.BaseRequest, status: int, headers: dict[str, str], held: bool
              ) -> web.StreamResponse | None:
    """``web.StreamResponse(status=status, headers=headers)`` started on ``request`` as
    ``start_stream`` starts it (after ``onewrite.head_with_first_bytes`` when ``held``): the
    response, its head written from the dict (``headshape``) instead of through a
    ``CIMultiDict`` and aiohttp's serializer, the same bytes and the same state. None when any
    step would take another branch, or the head would be written now on a transport that is
    gone or closing (nothing done: build the response and start it the other way)."""
    writer = request._payload_writer
    if (not onewrite.ENABLED or type(writer) is not StreamWriter or writer._headers_buf is not None
            or writer._eof or writer.chunked or writer._compress is not None or writer._on_headers_sent is not None
            or request.version != HttpVersion11 or must_be_empty_body(request.method, status)):
        return None
    if not held:  # (the head goes out now: send_headers would raise on a transport gone or closing)
        transport = writer._protocol.transport
        if transport is None or transport.is_closing():
            return None
    parts = shape_and_values(headers)
    if parts is None or has_prepare_receivers(request):
        return None
    shape, values = parts
    # The response as web.StreamResponse(...) and start_stream leave it.
    resp = web.StreamResponse.__new__(web.StreamResponse)
    resp._state = {}
    resp._headers = md = CIMultiDict(headers)
    resp._status = status
    resp._reason = reason = REASON_PHRASES.get(status, "")
    resp._must_be_empty_body = False
    resp._req = request
    resp._payload_writer = writer
    keep_alive = resp._keep_alive = request.keep_alive
    writer.length = None
    writer.chunked = True
    md[hdrs.TRANSFER_ENCODING] = "chunked"
    tail = "Transfer-Encoding: chunked\r\n" + shape.add_defaults(md)
    if not shape.connection and not keep_alive:
        md[hdrs.CONNECTION] = "close"
        tail += "Connection: close\r\n"
    writer._headers_buf = shape.head(f"HTTP/1.1 {status} {reason}", values, tail)
    writer._headers_written = False
    if held:
        resp._send_headers_immediately = False
    else:
        writer.send_headers()
    return resp
