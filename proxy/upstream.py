"""One provider's upstream client: requests encoded and sent with the four
timeouts, and the answer they give.

One ``UpstreamClient`` per provider, on the gateway's own HTTP/1.1 client
(``http1.py`` frames a connection; ``pool.py``'s ``ConnectionPool`` keeps
them alive, with an explicit connection limit). Timeouts:

- connect: TCP (and TLS) connect;
- first_byte: from sending the request to the response headers;
- idle: longest silence between two body reads;
- total: the whole exchange, headers and body.

Any of them answers 504. Connection failures answer 502.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import current_task
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import http1
from .deadline import DeadlineQueue
from .errors import ProxyError
from .heldwrites import HeldWrites
from .logs import throttled
from .pool import ConnectionPool

if TYPE_CHECKING:
    from .config import ProviderConfig

log = logging.getLogger("tollway.upstream")

# Bodies of non-stream answers and error answers are read whole; cap them so a
# broken upstream cannot exhaust memory.
MAX_UPSTREAM_BODY = 64 * 1024 * 1024
KEEPALIVE_S = 30.0  # an idle upstream connection older than this is closed, not reused
# Requests the pool may send a second time after the keep-alive race (pool.py's docstring).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_IDEMPOTENCY_HEADERS = frozenset({"idempotency-key", "x-idempotency-key"})


@dataclass(slots=True)
class UpstreamRequest:
    """What a provider adapter wants sent: the core sends it on the pooled connections."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


class UpstreamResponse:
    """An upstream answer whose headers have arrived; the body is read with
    the idle and total timeouts applied. The mock provider makes its own
    object with the same four members (status, headers, read_chunk, read_all)
    plus release(settle).

    The idle and total timeouts share one lazy timer per answer, armed at
    the first wait and re-armed only when it fires early: a stream's reads
    then cost no timer each (a stream waits once per chunk). When it expires
    it wakes the waiting read, which raises; no task is cancelled."""

    __slots__ = ("status", "_head", "_headers", "_conn", "_client", "_connections", "_loop", "_deadline", "_timer",
                 "_waiting_since", "_expired")

    def __init__(self, conn: http1.Connection, client: UpstreamClient, connections: ConnectionPool,
                 loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self.status = conn.status
        self._head = conn.raw_headers
        self._headers: Mapping[str, str] | None = None
        self._conn: http1.Connection | None = conn  # None once released
        self._client = client
        self._connections = connections
        self._loop = loop
        self._deadline = deadline
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # loop time the current wait began; 0 when not waiting
        self._expired: str | None = None  # "idle" or "total" once a wait ran out

    @property
    def deadline(self) -> float:
        """Loop time at which ``timeouts.total`` ends this answer."""
        return self._deadline

    @property
    def headers(self) -> Mapping[str, str]:
        """The answer's headers (case-insensitive), parsed on first use."""
        if self._headers is None:
            self._headers = http1.parse_headers(self._head)
        return self._headers

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may not have been read yet)."""
        conn = self._conn
        return conn is not None and conn.complete

    async def read_chunk(self) -> bytes:
        """The next bytes of the body as they arrive; b"" at the end."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("read after release()")
        try:
            # Bytes already here (or the end already seen): no waiting.
            data = conn.read_nowait()
            if data or conn.at_eof():
                return data
            loop = self._loop
            self._waiting_since = now = loop.time()
            if self._timer is None:
                self._timer = loop.call_at(min(now + self._client.timeouts.idle, self._deadline), self._on_timer)
            try:
                await conn.wait()
            finally:
                self._waiting_since = 0.0
            if self._expired is not None:
                raise self._client.timeout_error(self._expired)
            return conn.read_nowait()
        except (http1.BadResponse, ConnectionError) as exc:
            raise self._client.broken_error(exc) from None

    def _on_timer(self) -> None:
        self._timer = None
        since = self._waiting_since
        if not since or self._conn is None:
            return  # not waiting now: the next wait arms it again
        idle_due = since + self._client.timeouts.idle
        due = min(idle_due, self._deadline)
        if self._loop.time() >= due:
            self._expired = "idle" if idle_due < self._deadline else "total"
            self._conn.wake()
        else:
            self._timer = self._loop.call_at(due, self._on_timer)

    async def read_all(self, limit: int = MAX_UPSTREAM_BODY) -> bytes:
        """The whole body (non-stream answers and errors)."""
        conn = self._conn
        if conn is not None and conn.complete:  # the common case: the whole answer came with its head
            body = conn.read_nowait()
            if len(body) > limit:
                raise self._too_large(limit)
            return body
        parts = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if size > limit:
                raise self._too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self, limit: int) -> ProxyError:
        return ProxyError(502, f"upstream '{self._client.name}' answered more than {limit} bytes",
                          code="upstream_too_large")

    def release(self, settle: bool = False) -> None:
        """Give the connection back (closed instead when the body was not read to the end;
        ``settle``: the reader has all it wanted, wait for the body's end, see ``ConnectionPool.release``)."""
        conn, self._conn = self._conn, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if conn is not None:
            self._connections.release(conn, settle)


class UpstreamClient:
    """One provider's way upstream: its requests encoded, sent on its
    ``ConnectionPool`` (made in ``start``), and answered within its timeouts."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.timeouts = config.timeouts
        self.connections: ConnectionPool | None = None  # from start() to close()
        self.held_writes: HeldWrites | None = None  # the gateway's, set before start(): its pool's writes
        self.loop: asyncio.AbstractEventLoop | None = None
        self._heads: DeadlineQueue | None = None
        self._targets: dict[str, tuple[http1.Origin, str, str]] = {}

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.connections = ConnectionPool(self.config.max_connections, self.timeouts.connect, KEEPALIVE_S,
                                          held_writes=self.held_writes)
        self._heads = DeadlineQueue(self.loop)  # the first_byte deadlines of the requests waiting for a head

    async def close(self) -> None:
        if self._heads is not None:
            self._heads.close()
        if self.connections is not None:
            await self.connections.close()
            self.connections = None

    def encode(self, request: UpstreamRequest) -> tuple[http1.Origin, bytes]:
        """(origin, request bytes); URLs are split once each (providers use a handful)."""
        target = self._targets.get(request.url)
        if target is None:
            if len(self._targets) >= 1024:
                self._targets.clear()
            target = self._targets[request.url] = http1.split_url(request.url)
        origin, host, path = target
        try:
            payload = http1.encode_request(request.method, host, path, request.headers, request.body)
        except ValueError as exc:
            raise ProxyError(400, f"cannot send the request upstream: {exc}", code="bad_header") from None
        return origin, payload

    async def open(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request; return once the response headers have arrived."""
        connections, loop = self.connections, self.loop
        if connections is None or loop is None:
            raise RuntimeError(f"upstream {self.name!r}: UpstreamClient.start() was not awaited")
        origin, payload = self.encode(request)
        now = loop.time()
        deadline = now + self.timeouts.total
        first_byte = now + self.timeouts.first_byte
        if deadline < first_byte:  # (min() without the builtin's call)
            first_byte = deadline
        replayable = request.method in _SAFE_METHODS or not _IDEMPOTENCY_HEADERS.isdisjoint(
            map(str.lower, request.headers))
        # The first_byte deadline: the task is cancelled when it passes, and that cancellation,
        # and only it, is a timeout (``record[1]``). One timer for all of them (``DeadlineQueue``).
        task = current_task(loop)
        if task is None:
            raise RuntimeError("UpstreamClient.open is for code running in a task")
        heads = self._heads
        assert heads is not None  # (made with connections, in start)
        record = heads.watch(task, first_byte)
        try:
            try:
                conn = await connections.request(origin, payload, replayable)
            finally:
                heads.unwatch(task, record)
        except http1.ConnectTimeout:
            raise self.timeout_error("connect") from None
        except asyncio.CancelledError as exc:
            if not record[1] or type(exc) is not asyncio.CancelledError:
                raise
            task.uncancel()
            raise self.timeout_error("first_byte" if first_byte < deadline else "total") from None
        except TimeoutError:
            raise self.timeout_error("first_byte" if first_byte < deadline else "total") from None
        except http1.CannotConnect as exc:
            throttled(log, logging.WARNING, f"connect:{self.name}", "upstream %s: cannot connect: %s", self.name, exc)
            raise ProxyError(502, f"could not connect to upstream '{self.name}'",
                             code="upstream_unreachable") from None
        except (http1.BadResponse, ConnectionError) as exc:
            raise self.broken_error(exc) from None
        return UpstreamResponse(conn, self, connections, loop, deadline)

    def timeout_error(self, which: str) -> ProxyError:
        seconds = getattr(self.timeouts, which)
        return ProxyError(504, f"upstream '{self.name}' timed out ({which} timeout of {seconds:g}s)",
                          code=f"upstream_timeout_{which}")

    def broken_error(self, exc: BaseException) -> ProxyError:
        if isinstance(exc, http1.BadResponse):
            throttled(log, logging.WARNING, f"bad-response:{self.name}", "upstream %s: refused its answer: %s",
                      self.name, exc)
            return ProxyError(502, f"upstream '{self.name}' sent an answer that is not valid HTTP/1.1: {exc}",
                              code="upstream_bad_response")
        throttled(log, logging.WARNING, f"broken:{self.name}", "upstream %s: connection failed: %r", self.name, exc)
        return ProxyError(502, f"upstream '{self.name}' closed the connection unexpectedly",
                          code="upstream_disconnected")


