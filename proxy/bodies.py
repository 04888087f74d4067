"""A request's body, read whole: the one place that turns a body that cannot be
read (too large, too slow, a Content-Encoding that does not decode, broken
chunked framing, a client that hung up) into the client's answer. JSON bodies
(``routes.read_json``) and multipart uploads (``uploads.read_upload``) both read
through it, so an upload fails the way a JSON body does: a 4xx, never a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.helpers import TimerNoop
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError

from .connection import BodyReadTimeout
from .errors import ProxyError, bad_request
from .logs import throttled
from .onewrite import AIOHTTP_314

__all__ = ["arrived", "client_gone", "read_body"]

log = logging.getLogger("tollway")


async def read_body(request: web.Request, limit: int, too_large: Callable[[int], ProxyError]) -> bytes:
    """The whole body; ``too_large(limit)`` above ``limit``, 408 when it is late,
    400 when it cannot be decoded, 499 when the client hung up."""
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    try:
        raw = arrived(request)
        if raw is None:
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None
    except BodyReadTimeout as exc:
        raise ProxyError(408, str(exc), code="body_read_timeout") from None
    except RequestPayloadError as exc:  # a Content-Encoding that does not decode, broken chunked framing
        cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
        raise bad_request(f"the request body cannot be read: {_reason(cause)}", code="invalid_body") from None
    except ConnectionError:
        raise client_gone() from None
    if len(raw) > limit:
        raise too_large(limit)
    return raw


def arrived(request: web.BaseRequest) -> bytes | None:
    """``request.read()``'s answer when the whole body is already here (the parser saw its
    end; the usual JSON request comes in one read with its head) and nothing read it yet:
    what ``read()`` does then (the read chunk size raised, every buffered byte taken, the
    size checked against ``client_max_size``, the bytes kept for a later ``read()``)
    without its two awaited ``readany`` calls and its copy through a bytearray. None when
    the body is still arriving or failed (``read()`` then)."""
    payload = request._payload
    if (not AIOHTTP_314 or request._read_bytes is not None or type(payload) is not StreamReader
            or not payload.is_eof() or payload.exception() is not None):
        return None
    max_size = request._client_max_size
    if max_size and max_size > payload._low_water:  # (set_read_chunk_size)
        payload._low_water = max_size
        payload._high_water = max_size * 2
    buffer = payload._buffer
    if (len(buffer) == 1 and not payload._buffer_offset and payload._http_chunk_splits is None
            and payload._waiter is None and type(payload._timer) is TimerNoop):
        # (read_nowait of a body in one piece: its one chunk taken, the counts moved, the protocol
        # resumed under the low-water mark, without read_nowait's three calls)
        raw = buffer.popleft()
        size = len(raw)
        payload._size -= size
        payload._cursor += size
        if payload._size < payload._low_water:
            payload._protocol.resume_reading()
    else:
        raw = payload.read_nowait()
    if type(raw) is not bytes:
        raw = bytes(raw)
    if max_size and len(raw) > max_size:
        raise web.HTTPRequestEntityTooLarge(max_size)
    request._read_bytes = raw
    return raw


def _reason(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    return " ".join(str(text).split())[:200] or type(exc).__name__


def client_gone() -> ProxyError:
    """The client hung up before its request was read: nobody to answer. One
    rate-limited line in the log, 499 (nginx's "client closed request") in the
    access log."""
    throttled(log, logging.INFO, "client_gone_body", "a client closed its connection before sending the whole "
                                                      "request body")
    return ProxyError(499, "the client closed the connection before sending the whole request body",
                      code="client_closed_request")
