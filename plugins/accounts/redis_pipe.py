"""The request path's Redis connection: one pipelined connection, hiredis framing.

Why not redis-py for these calls: measured on this project's machine, one
``EVALSHA`` through redis-py's asyncio client (connection pool, retry wrapper,
command layers) costs about 4 times the CPU of the same bytes on one
connection (``benchmarks/RESULTS.md``, "Shared counters"), and the scripts run
on every metered or limited request. So the scripts go over one connection
that every request shares: commands are packed by hiredis
(``hiredis.pack_command``), written together once per event-loop turn (what
many requests send in one turn is one ``write``), and replies, parsed by
``hiredis.Reader``, answer the waiting requests in order. Everything else
(pub/sub, the ledger stream, the probe) stays on redis-py.

Over TLS (``rediss://``) the same: asyncio's TLS transport encrypts what ``write``
is given and hands the ciphertext to the socket within that call (once the
handshake is done, which ``connect`` waits for), so ``written`` means the same
there: the kernel has the bytes.

Timeouts without a timer per call: a watchdog looks every ``timeout / 4``;
when the oldest call was written longer than ``timeout`` ago and its reply is
still not read after the loop's next look at the socket, the connection is
closed and every call waiting fails (the link is then marked down). Only Redis's
silence counts: a process that was not scheduled (a loaded machine) or ran a long
loop turn may find replies waiting unread in the socket, and a call queued but not
written yet is waiting for this process, not for Redis. (Before, the wait counted
from the call's queueing and the watchdog could run before the socket was read: a
worker stalled 2 s failed every call in flight with "Redis did not answer", 503s
and charges left waiting.)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import hiredis

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable


class PipeClosed(ConnectionError):
    pass


class RedisPipe(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reader = hiredis.Reader()
        #: [future, time.monotonic() it was written (0.0 until then)], in the order sent
        self.waiting: deque[list] = deque()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None
        self._written: asyncio.Future | None = None  # see written()
        #: Called right before each write: what was gathered for the turn (token corrections)
        #: joins the commands written anyway, instead of a write of its own in a later turn.
        self.before_write: Callable[[], None] | None = None

    @classmethod
    async def connect(cls, options: dict[str, Any], timeout: float, tls: ssl.SSLContext | None = None) -> RedisPipe:
        """Connect (TCP, TCP with ``tls``, or unix socket), authenticate and select the
        database, within ``timeout``."""
        loop = asyncio.get_running_loop()
        pipe = cls(timeout)
        if options.get("path"):
            coro = loop.create_unix_connection(lambda: pipe, options["path"])
        else:
            host = options.get("host", "localhost")
            coro = loop.create_connection(lambda: pipe, host, options.get("port", 6379), ssl=tls,
                                          server_hostname=host if tls is not None else None)
        async with asyncio.timeout(timeout):
            await coro
        hello = []
        if options.get("password"):
            user = options.get("username")
            hello.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if options.get("db"):
            hello.append(("SELECT", int(options["db"])))
        try:
            for command in hello:
                async with asyncio.timeout(timeout):
                    reply = await pipe.send(hiredis.pack_command(command))
                if isinstance(reply, hiredis.ReplyError):
                    raise PipeClosed(f"Redis refused {command[0]}: {reply}")
        except BaseException:
            pipe.close()  # (a reply that came too late, or a cancel: the connection left open was nobody's)
            raise
        return pipe

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            reply = reader.gets()
            if reply is False:
                return
            future, _ = waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(PipeClosed("the connection to Redis was lost" if exc is None else str(exc)))

    # -- calls -----------------------------------------------------------------------------
    def send(self, packed: bytes) -> asyncio.Future:
        """Queue one packed command; its reply (a ``hiredis.ReplyError`` for an error) is the future's.

        Written at the end of the turn with every other command of the turn (one ``write``),
        or at once when the connection is idle (no command queued nor waiting for its reply:
        one request at a time, nothing to share the write with; a turn's wait would only cost
        a loop iteration and latency)."""
        if self.closed:
            raise PipeClosed("the connection to Redis is closed")
        future = self._loop.create_future()
        waiting = self.waiting
        out = self.out
        idle = not out and not waiting
        waiting.append([future, 0.0])
        out.append(packed)
        if idle:
            self._flush()
        elif len(out) == 1:
            self._loop.call_soon(self._flush)
        return future

    def written(self) -> asyncio.Future | None:
        """None when no command waits to be written; else a future done once this turn's
        write has handed them to the kernel, which delivers them even if this process is
        killed the next instant (a charge must reach Redis before its answer reaches the
        client: ``Accounts.charges_written``). One write (and one future) for every command
        of the turn: a write per command would cost a system call each."""
        if not self.out or self.closed:
            return None
        written = self._written
        if written is None:
            written = self._written = self._loop.create_future()
        return written

    def _flush(self) -> None:
        if self.before_write is not None and not self.closed:
            self.before_write()
        out = self.out
        if out and self.transport is not None and not self.closed:
            data = b"".join(out)
            count = len(out)
            out.clear()
            self.transport.write(data)
            now = time.monotonic()
            waiting = self.waiting  # (the last ``count`` waiting are those just written)
            for i in range(len(waiting) - count, len(waiting)):
                waiting[i][1] = now
        self._wrote()

    def _wrote(self) -> None:
        written, self._written = self._written, None
        if written is not None and not written.done():
            written.set_result(None)

    # -- the watchdog ----------------------------------------------------------------------
    def _arm(self) -> None:
        self._watchdog = self._loop.call_later(self.timeout / 4, self._check)

    def _overdue(self) -> bool:
        waiting = self.waiting
        return bool(waiting) and 0.0 < waiting[0][1] < time.monotonic() - self.timeout

    def _check(self) -> None:
        if self.closed:
            return
        if self._overdue():  # confirmed after the loop's next read of the socket (a timer runs after it)
            self._watchdog = self._loop.call_later(0, self._confirm)
            return
        self._arm()

    def _confirm(self) -> None:
        if self.closed:
            return
        if self._overdue():
            self._fail(TimeoutError(f"Redis did not answer within {self.timeout:g}s"))
            return
        self._arm()

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.transport is not None:
            self.transport.abort()
        waiting, self.waiting = self.waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(exc)
        self.out.clear()
        self._wrote()  # (nothing more will be: whoever waits goes on; what failed is sent again)

    def close(self) -> None:
        if not self.closed:
            self._fail(PipeClosed("closed"))
