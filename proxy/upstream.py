"""Pooled upstream sessions with the four timeouts, and the response they give.

One ``UpstreamPool`` per provider: one aiohttp session, one connector with an
explicit connection limit. Timeouts:

- connect: TCP (and TLS) connect, enforced by aiohttp;
- first_byte: from sending the request to the response headers;
- idle: longest silence between two body reads;
- total: the whole exchange, headers and body.

Any of them answers 504. Connection failures answer 502.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from .errors import ProxyError

if TYPE_CHECKING:
    from .config import ProviderConfig

log = logging.getLogger("tollway.upstream")

# Bodies of non-stream answers and error answers are read whole; cap them so a
# broken upstream cannot exhaust memory.
MAX_UPSTREAM_BODY = 64 * 1024 * 1024


class Deadline:
    """Cancel the current task at ``when`` (loop time); leaving the block by
    that cancellation raises TimeoutError. ``asyncio.timeout_at`` with fewer
    steps: it is armed once or twice per request on the hot path."""

    __slots__ = ("_when", "_loop", "_task", "_handle", "_fired")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._loop = loop
        self._when = when
        self._fired = False

    def __enter__(self) -> Deadline:
        self._task = asyncio.current_task(self._loop)
        self._handle = self._loop.call_at(self._when, self._fire)
        return self

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._handle.cancel()
        if self._fired and exc_type is asyncio.CancelledError:
            self._task.uncancel()
            raise TimeoutError
        return False


@dataclass(slots=True)
class UpstreamRequest:
    """What a provider adapter wants sent: the core sends it on the pooled session."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


class UpstreamResponse:
    """An upstream answer whose headers have arrived; the body is read with
    the idle and total timeouts applied. The mock provider makes its own
    object with the same four members (status, headers, read_chunk, read_all)
    plus release()."""

    __slots__ = ("status", "headers", "_resp", "_pool", "_deadline", "_loop")

    def __init__(self, resp: aiohttp.ClientResponse, pool: UpstreamPool, deadline: float) -> None:
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers
        self._resp = resp
        self._pool = pool
        self._deadline = deadline
        self._loop = asyncio.get_running_loop()

    async def read_chunk(self) -> bytes:
        """The next bytes of the body as they arrive; b"" at the end."""
        content = self._resp.content
        try:
            # Bytes already here (or the end already seen): no waiting, so no timer to arm.
            data = content.read_nowait()
            if data or content.at_eof():
                return data
            deadline = min(self._loop.time() + self._pool.timeouts.idle, self._deadline)
            with Deadline(self._loop, deadline):
                return await content.readany()
        except TimeoutError:
            raise self._pool.timeout_error("idle" if deadline < self._deadline else "total") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise self._pool.broken_error(exc) from None

    async def read_all(self, limit: int = MAX_UPSTREAM_BODY) -> bytes:
        """The whole body (non-stream answers and errors)."""
        parts = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if size > limit:
                raise ProxyError(502, f"upstream '{self._pool.name}' answered more than {limit} bytes",
                                 code="upstream_too_large")
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back (or drop it when the body was not read to the end)."""
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


class UpstreamPool:
    """One provider's connection pool and timeouts."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.timeouts = config.timeouts
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            limit_per_host=self.config.max_connections,
            ttl_dns_cache=300,
            keepalive_timeout=30,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect),
            auto_decompress=False,  # bytes pass through as the upstream sent them
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request; return once the response headers have arrived."""
        assert self._session is not None, "UpstreamPool.start() was not awaited"
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self.timeouts.total
        first_byte = min(now + self.timeouts.first_byte, deadline)
        try:
            with Deadline(loop, first_byte):
                resp = await self._session.request(
                    request.method, request.url, data=request.body, headers=request.headers,
                    allow_redirects=False,
                )
        except aiohttp.ConnectionTimeoutError:
            raise self.timeout_error("connect") from None
        except TimeoutError:
            raise self.timeout_error("first_byte" if first_byte < deadline else "total") from None
        except aiohttp.ClientConnectorError as exc:
            log.warning("upstream %s: cannot connect: %s", self.name, exc)
            raise ProxyError(502, f"could not connect to upstream '{self.name}'",
                             code="upstream_unreachable") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise self.broken_error(exc) from None
        return UpstreamResponse(resp, self, deadline)

    def timeout_error(self, which: str) -> ProxyError:
        seconds = getattr(self.timeouts, which)
        return ProxyError(504, f"upstream '{self.name}' timed out ({which} timeout of {seconds:g}s)",
                          code=f"upstream_timeout_{which}")

    def broken_error(self, exc: BaseException) -> ProxyError:
        log.warning("upstream %s: connection failed: %r", self.name, exc)
        return ProxyError(502, f"upstream '{self.name}' closed the connection unexpectedly",
                          code="upstream_disconnected")
