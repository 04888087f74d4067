"""Writing to a client that may stop reading: ``server.timeouts.client_write``.

A client that stops taking bytes fills the socket, then the transport's
buffer; past its high-water mark aiohttp's ``write`` waits for the buffer to
drain, and without a bound it waits for ever, holding the upstream
connection and the credit reservation with it. ``ClientWriter`` bounds that
wait: a write that cannot finish within ``client_write`` seconds (or by the
upstream's total deadline, whichever is first) aborts the connection and
raises ``ClientStalled``, a ``ConnectionError``, so callers treat the client
as gone (a stream then drains its upstream for billing, as for a hang-up).

No timer on the usual path: asyncio and uvloop pause a protocol only when
the transport's buffer passes its high-water mark, and resume it once the
buffer is back under the low-water mark, so a write can only wait when bytes
are already buffered (the client is behind) or when it alone is larger than
the high-water mark. Only such writes are timed; a client that keeps up
leaves the buffer empty and costs one size check per write.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from .deadline import Deadline
from .onewrite import end_stream, end_whole, start_whole

if TYPE_CHECKING:
    from aiohttp import web

CLIENT_WRITE_TIMEOUT = "client_write_timeout"  # the error code the ledger records


class ClientStalled(ConnectionError):
    """The client took no bytes for ``server.timeouts.client_write`` seconds."""


class ClientWriter:
    """``write``/``write_eof`` of one response, with the client write timeout."""

    __slots__ = ("_resp", "_transport", "_timeout", "_high")

    def __init__(self, resp: web.StreamResponse, request: web.BaseRequest | None, timeout: float) -> None:
        self._resp = resp
        self._transport = request.transport if request is not None else None
        self._timeout = timeout
        self._high = self._transport.get_write_buffer_limits()[1] if self._transport is not None else 0

    # A write may wait when bytes are already buffered or it alone passes the high-water mark
    # (the test, inline in each: a method call fewer per write, three a stream).

    async def write(self, data: bytes, due: float = math.inf) -> None:
        """Write ``data``; ``due`` (loop time) is another deadline to honour while waiting."""
        transport = self._transport
        if transport is None or (len(data) <= self._high and transport.get_write_buffer_size() == 0):
            await self._resp.write(data)
            return
        await self._bounded(self._resp.write(data), due)

    async def write_eof(self, data: bytes = b"", due: float = math.inf) -> None:
        """Write ``data`` (if any) and end the response: aiohttp writes the two in one call
        (a chunked answer's last chunk and its terminator together: the same bytes as a
        ``write`` then a ``write_eof``, one transport write fewer)."""
        transport = self._transport
        if transport is None or (len(data) <= self._high and transport.get_write_buffer_size() == 0):
            await self._resp.write_eof(data)
            return
        await self._bounded(self._resp.write_eof(data), due)

    async def write_all_eof(self, parts: list[bytes], last: bytes, due: float = math.inf) -> None:
        """``write(part, due)`` for each of ``parts``, then ``write_eof(last)``: in one transport
        write (``onewrite.end_stream``) when none of them could wait (the buffer is empty and
        they fit under the high-water mark together)."""
        transport = self._transport
        if parts and transport is not None and transport.get_write_buffer_size() == 0:
            size = len(last)
            for part in parts:
                size += len(part)
            if size <= self._high:
                writer = end_stream(self._resp, parts, last)
                if writer is not None:
                    if writer._protocol._paused:
                        await writer.drain()
                    end_whole(self._resp, writer)
                    return
        for part in parts:
            await self.write(part, due)
        await self.write_eof(last)

    async def _bounded(self, waiting: Awaitable[None], due: float) -> None:
        # (the loop looked up here, on the slow path only: asyncio.get_running_loop() makes a
        # getpid system call, ~250 ns, which most streams never need)
        loop = asyncio.get_running_loop()
        try:
            with Deadline(loop, min(loop.time() + self._timeout, due)):
                await waiting
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()  # frees the buffered bytes; the client is gone
            raise ClientStalled(f"the client took no bytes for {self._timeout:g}s") from None


# (A tuple: ``bytes | bytearray`` would build a union object at every call.)
_BYTES = (bytes, bytearray)


async def send_whole(resp: web.Response, request: web.BaseRequest, timeout: float) -> None:
    """Write a whole (non-stream) response, bounded by the client write timeout
    when its body is large enough to wait on; ``ClientStalled`` when it was."""
    transport = request.transport
    body = resp.body
    size = len(body) if isinstance(body, _BYTES) else 0
    if transport is None or (size <= transport.get_write_buffer_limits()[1]
                             and transport.get_write_buffer_size() == 0):
        writer = start_whole(resp, request)  # (aiohttp's steps in one call, where they take their plain branch)
        if writer is None:
            await resp.prepare(request)
            await resp.write_eof()
            return
        if writer._protocol._paused:
            await writer.drain()
        end_whole(resp, writer)
        return
    loop = asyncio.get_running_loop()
    try:
        with Deadline(loop, loop.time() + timeout):
            await resp.prepare(request)
            await resp.write_eof()
    except TimeoutError:
        transport.abort()
        raise ClientStalled(f"the client took no bytes for {timeout:g}s") from None
