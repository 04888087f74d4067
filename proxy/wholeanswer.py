"""The core's own whole answers (a JSON body and a plain dict of headers), sent without building them
through ``web.Response`` first.

A 200 JSON answer of tollway-full went: the plugins' headers (a dict) copied into a
``web.Response`` (~14k instructions: its ``__init__`` and a CIMultiDict of ~14 names), four more
headers added through case-folding look-ups (``onewrite.start_whole``), and the ~18 headers
serialized by aiohttp's Cython writer, a character at a time (~24k). ``send_answer`` writes the
same bytes from the dict itself (``headshape``: the head's text kept per tuple of header names, an
answer's values slotted in), with the ``Content-Length``/``Date``/``Server``/``Connection`` lines
aiohttp would add. The response it returns is the one aiohttp would have left (the same fields,
``headers`` included).

The same bytes, in the same transport write, and the same response as ``web.Response(status=...,
body=..., headers=...)`` sent by ``clientwrite.send_whole``, where ``start_whole`` takes its one
write; anything else (a name that is not printable ASCII, a header aiohttp would add or refuse
given already: ``Content-Length``; a value with a control character or outside ASCII; a transport
with bytes buffered or closing; ``on_response_prepare`` receivers; HEAD, a status without a body;
another aiohttp) returns None having done nothing, and the caller sends a ``web.Response``.
``tests/test_wholeanswer.py`` holds the two together over generated answers.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.compression_utils import MAX_SYNC_CHUNK_SIZE
from aiohttp.helpers import must_be_empty_body
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_writer import StreamWriter
from aiohttp.web_response import REASON_PHRASES
from multidict import CIMultiDict

from .headshape import shape_and_values
from .heldwrites import held_writes_of
from .onewrite import _WRITEV, ENABLED, has_prepare_receivers

__all__ = ["send_answer"]


def send_answer(request: web.BaseRequest, status: int, headers: dict[str, str], body: bytes
                ) -> tuple[web.Response, StreamWriter] | None:
    """``web.Response(status=status, body=body, headers=headers)`` sent as ``send_whole`` sends it
    when it takes its one write: the response and the writer (the caller awaits its drain when
    its protocol is paused, and ends it with ``onewrite.end_whole``); None when another branch
    would be taken (nothing done)."""
    writer = request._payload_writer
    transport = request.transport
    size = len(body)
    if (not ENABLED or type(body) is not bytes or not size or type(writer) is not StreamWriter
            or transport is None or transport.is_closing() or size > transport.get_write_buffer_limits()[1]
            or transport.get_write_buffer_size() or writer._headers_buf is not None or writer._eof
            or writer.chunked or writer._compress is not None or writer._on_headers_sent is not None
            or writer._on_chunk_sent is not None or writer.on_body_write is not None
            or must_be_empty_body(request.method, status)):
        return None
    parts = shape_and_values(headers)
    if parts is None or has_prepare_receivers(request):
        return None
    shape, values = parts
    # The response as web.Response(...) and start_whole leave it.
    resp: web.Response = web.Response.__new__(web.Response)
    resp._state = {}
    resp._headers = md = CIMultiDict(headers)
    resp._status = status
    resp._reason = reason = REASON_PHRASES.get(status, "")
    resp._body = body
    resp._compressed_body = None
    resp._zlib_executor_size = MAX_SYNC_CHUNK_SIZE
    resp._zlib_executor = None
    resp._must_be_empty_body = False
    resp._req = request
    resp._payload_writer = writer
    keep_alive = resp._keep_alive = request.keep_alive
    version = request.version
    writer.length = size
    length = str(size)
    md[hdrs.CONTENT_LENGTH] = length
    tail = f"Content-Length: {length}\r\n" + shape.add_defaults(md)
    if not shape.connection:
        if keep_alive:
            if version == HttpVersion10:
                md[hdrs.CONNECTION] = "keep-alive"
                tail += "Connection: keep-alive\r\n"
        elif version == HttpVersion11:
            md[hdrs.CONNECTION] = "close"
            tail += "Connection: close\r\n"
    head = shape.head(f"HTTP/{version[0]}.{version[1]} {status} {reason}", values, tail)
    writer._headers_written = True
    if type(transport) in _WRITEV:  # (_writelines' counts and write, without its loop and join: onewrite.end_stream)
        size += len(head)  # (the transport is the writer's: the request's protocol's; not closing, checked above)
        writer.buffer_size += size
        writer.output_size += size
        held = held_writes_of(writer._protocol)
        if held is not None:  # the answer's one write: at the end of the loop's pass (heldwrites.py)
            held.hold(transport.writelines, (head, body))
        else:
            transport.writelines((head, body))
    else:
        writer._writelines((head, body))
    return resp, writer

