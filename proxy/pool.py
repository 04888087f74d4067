"""The upstream connection pool: keep-alive ``http1.Connection``s to any number
of origins, at most ``limit`` open at once, idle ones closed after ``keepalive``
seconds (or sooner, when the upstream said so in ``Keep-Alive: timeout=N``).
``ConnectionPool.request`` is what ``upstream.py`` calls: send, and return once the
answer's head is in.

When a request is sent again (at most once, on a new connection):

- never after any byte of an answer arrived (a partial head, an interim 1xx,
  a malformed answer), never after a timeout: the upstream saw the request;
- always when no byte of it was written (the connection was found closed as
  the request went out, or it closed while the request waited in the pass's
  held writes, ``heldwrites.py``): the upstream cannot have seen it;
- when it was written on a reused connection that then closed without a
  byte of answer (the keep-alive race: the upstream closed the idle
  connection as the request went out), only if the request is replayable:
  a GET, HEAD or OPTIONS, or one that carries an ``Idempotency-Key``. From
  the client's side that race cannot be told apart from an upstream that
  read the request, began the work (and the bill) and then died, so a POST
  to a model is not sent twice by the gateway: it is answered 502
  ``upstream_disconnected``, and the client (whose SDK retries 5xx) or a
  configured fallback decides. Honouring the upstream's ``Keep-Alive:
  timeout`` makes that race rare.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from .deadline import Deadline
from .heldwrites import HeldWrites
from .http1 import CannotConnect, Connection, ConnectTimeout, NotSent, Origin, UpstreamClosed

#: How long a released connection waits for the end of an answer its reader left (``release``'s ``settle``).
SETTLE_SECONDS = 1.0


class ConnectionPool:
    """Keep-alive connections to any number of origins, at most ``limit`` open at once."""

    def __init__(self, limit: int, connect_timeout: float, keepalive: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None, held_writes: HeldWrites | None = None) -> None:
        self.limit = limit
        self.held_writes = held_writes  # requests written at the end of the loop's pass (None: at once)
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.loop = asyncio.get_running_loop()
        self.open_count = 0
        self._idle: dict[Origin, list[Connection]] = {}
        self._all: set[Connection] = set()
        self._waiters: deque[asyncio.Future] = deque()
        self._ssl = ssl_context  # None: the system's trust store, made on the first https connect
        self._sweep: asyncio.TimerHandle | None = None
        # Connections waiting for the end of an answer their reader left (release), oldest first,
        # with when they began; one timer for all of them (a timer a stream costs ~2 µs).
        self._settling: dict[Connection, float] = {}
        self._settle_timer: asyncio.TimerHandle | None = None
        self._closed = False

    def counts(self) -> tuple[int, int]:
        """(in use, idle) connections now open (for metrics; not on the request path)."""
        idle = sum(len(conns) for conns in self._idle.values())
        return self.open_count - idle, idle

    async def request(self, origin: Origin, payload: bytes, replayable: bool = False) -> Connection:
        """Send ``payload`` on a pooled connection; return it once the answer's
        head has arrived. Sent again at most once, by the rule in the module
        docstring (``replayable``: the request may be processed twice)."""
        for attempt in (1, 2):
            conn = None if self._closed else self._take_idle(origin)  # (acquire's first step, without its coroutine)
            if conn is not None:
                reused = True
            else:
                conn, reused = await self.acquire(origin)
            try:
                conn.send(payload)
                # (Connection.read_head's loop, without its coroutine: one frame less at each wake)
                while conn.reading_head():
                    await conn.wait()
                return conn
            except NotSent:
                self.release(conn)
                if attempt == 1:
                    continue
                raise
            except UpstreamClosed:
                self.release(conn)
                if attempt == 1 and reused and replayable and not conn.received:
                    continue
                raise
            except BaseException:
                self.release(conn)
                raise
        raise AssertionError("unreachable")

    async def acquire(self, origin: Origin) -> tuple[Connection, bool]:
        """A connection to ``origin``: an idle one if any (reused=True), else a new one."""
        while True:
            if self._closed:
                raise CannotConnect("the pool is closed")
            conn = self._take_idle(origin)
            if conn is not None:
                return conn, True
            if self.open_count < self.limit or self._close_idle_elsewhere() or (
                    self._stop_settling() and self.open_count < self.limit):
                break
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake_one()  # we were woken but will not use it: pass it on
                raise
        self.open_count += 1
        try:
            return await self._connect(origin), False
        except BaseException:
            self.open_count -= 1
            self._wake_one()
            raise

    def release(self, conn: Connection, settle: bool = False) -> None:
        """Give a connection back: idle for reuse if its answer was read to the end, else closed.

        ``settle``: the reader saw the end of what it wanted before the body's end came (a
        stream's last event arrives before its chunked terminator, often in a read of its
        own). The connection then waits for that end, up to ``SETTLE_SECONDS`` (and
        ``http1.SETTLE_BYTES``), and becomes idle when it comes: reused, not reopened.
        A request that finds the pool full takes a settling connection's slot at once."""
        if conn.reusable and not self._closed:
            self._park(conn)
        elif settle and not self._closed and conn.can_settle():
            conn.settle(self._settled)
            now = self.loop.time()
            self._settling[conn] = now
            if self._settle_timer is None:
                self._settle_timer = self.loop.call_at(now + SETTLE_SECONDS, self._stop_late_settlers)
        else:
            conn.abort()
            self._forget(conn)

    def lost(self, conn: Connection) -> None:
        """The connection closed (called by the connection itself)."""
        if self._settling.pop(conn, None) is not None:
            self._forget(conn)
        elif conn.idle:
            conn.idle = False
            idle = self._idle.get(conn.origin)
            if idle and conn in idle:
                idle.remove(conn)
            self._forget(conn)

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        if self._settle_timer is not None:
            self._settle_timer.cancel()
        self._settling.clear()
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)  # they wake, see the pool closed, and fail
        await asyncio.sleep(0)  # let the transports finish closing

    # -- inside ---------------------------------------------------------------------------
    def _park(self, conn: Connection) -> None:
        """An answer read to its end: the connection waits, idle, for the next request."""
        conn.idle = True
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.origin, []).append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self.keepalive, self._sweep_idle)
        self._wake_one()

    def _settled(self, conn: Connection) -> None:
        """A settling connection's answer ended (``Connection.settle``'s callback)."""
        self._settling.pop(conn, None)
        if conn.reusable and not self._closed:
            self._park(conn)
        else:
            conn.abort()
            self._forget(conn)

    def _stop_settling(self) -> bool:
        """For a request that finds the pool full: close the oldest settling connection
        (True), if there is one."""
        if not self._settling:
            return False
        conn = next(iter(self._settling))
        del self._settling[conn]
        conn.abort()
        self._forget(conn)
        return True

    def _stop_late_settlers(self) -> None:
        """Close the connections that have settled for ``SETTLE_SECONDS`` (the timer's call)."""
        self._settle_timer = None
        settling = self._settling
        late = self.loop.time() - SETTLE_SECONDS
        while settling:
            conn, since = next(iter(settling.items()))
            if since > late:
                if not self._closed:
                    self._settle_timer = self.loop.call_at(since + SETTLE_SECONDS, self._stop_late_settlers)
                return
            del settling[conn]
            conn.abort()
            self._forget(conn)

    async def _connect(self, origin: Origin) -> Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            with Deadline(self.loop, self.loop.time() + self.connect_timeout) as deadline:
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self, origin), host, port, ssl=tls,
                    server_hostname=host if tls else None)
        except OSError as exc:  # TimeoutError is one: ours (the deadline) or the kernel's ETIMEDOUT
            if deadline.fired:
                raise ConnectTimeout(f"connect to {host}:{port}") from None
            raise CannotConnect(f"{host}:{port}: {exc}") from exc
        self._all.add(conn)
        return conn

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = self.loop.time()
        keepalive = self.keepalive
        while idle:
            conn = idle.pop()  # the newest: the least likely to have been closed by the upstream
            conn.idle = False
            # (min(keepalive, conn.keepalive) without the builtin's call: ~1.2k instructions less)
            if not conn.closed and now - conn.idle_since <= (conn.keepalive if conn.keepalive < keepalive
                                                             else keepalive) \
                    and not conn.transport.is_closing():
                return conn
            conn.abort()
            self._forget(conn)
        return None

    def _close_idle_elsewhere(self) -> bool:
        """At the limit: free a slot held by an idle connection to another origin."""
        for idle in self._idle.values():
            if idle:
                conn = idle.pop(0)
                conn.idle = False
                conn.abort()
                self._forget(conn)
                return self.open_count < self.limit
        return False

    def _forget(self, conn: Connection) -> None:
        if conn.counted:
            conn.counted = False
            self.open_count -= 1
            self._all.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep_idle(self) -> None:
        """Close connections idle longer than ``keepalive`` (runs while any are idle)."""
        self._sweep = None
        oldest_allowed = self.loop.time() - self.keepalive
        left = 0
        for idle in self._idle.values():
            while idle and idle[0].idle_since < oldest_allowed:
                conn = idle.pop(0)
                conn.idle = False
                conn.abort()
                self._forget(conn)
            left += len(idle)
        if left and not self._closed:
            self._sweep = self.loop.call_later(self.keepalive, self._sweep_idle)
