"""Socket writes held to the end of the event loop's pass, then made back to back.

uvloop writes a transport's bytes at once when it has none queued: a gateway under load
makes its writes (an upstream request, a client's whole answer) one request's Python apart,
100-200 µs. A write that wakes a process sleeping on another CPU of this machine (a local
upstream, a sidecar, a load generator, a proxy in front) makes the kernel send that CPU an
inter-processor interrupt when the CPU went idle, and in a virtual machine sending one costs
the sender ~10 µs: spaced out, nearly every write found its peer's CPU idle again (1.7 a
stream in the benchmark's one-write shape, under nginx and wrk). Held to the end of the pass,
the writes of every request handled in it go out back to back, and the peers' CPU is woken
once a pass, not once a write (0.11 a stream; the target's CPU a stream 217 -> 166 µs:
benchmarks/RESULTS.md). With one call in flight there is nothing to batch: written at once.

What is held: writes after which nothing else is written to that transport in the same pass by
another path: an upstream request (``http1.Connection.send``; the answer comes after it) and a
client's last write of an answer on uvloop's transports (``onewrite.end_stream``,
``wholeanswer.send_answer``). The flush runs in the loop's next pass before any callback
scheduled after the write (the loop runs its ready callbacks in order), so whatever a held write
led to (its answer, the next request on the connection, a shutdown waiting for the handler) comes
after it. Code that would write to or close a transport in the same pass (``serve_requests``: a
pipelined request, a close) calls ``flush`` first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sized
from typing import Any

__all__ = ["HeldWrites", "held_writes_of"]


class HeldWrites:
    """The writes held in this pass of ``loop``: ``(write, data)`` pairs, made in order by ``flush``.

    ``in_flight`` (the gateway's calls in flight): while it holds one call or none, a write is made
    at once: one request at a time has nothing to share a pass with, and holding would only add
    the loop's next pass to its latency (~0.03 ms at concurrency 1). None: always held."""

    __slots__ = ("_loop", "_held", "_in_flight")

    def __init__(self, loop: asyncio.AbstractEventLoop, in_flight: Sized | None = None) -> None:
        self._loop = loop
        self._held: list[tuple[Callable[[Any], object], Any]] = []
        self._in_flight = in_flight

    def hold(self, write: Callable[[Any], object], data: Any) -> None:
        """``write(data)`` at the end of this pass (e.g. ``transport.writelines, frames``), or now
        when no other call is in flight."""
        if self._in_flight is not None and len(self._in_flight) < 2:
            write(data)
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append((write, data))

    def flush(self) -> None:
        """Make every held write now, in the order held. A transport closed meanwhile takes
        nothing (uvloop raises, or drops the bytes of a lost connection, as for any late write)."""
        held = self._held
        if not held:
            return
        self._held = []
        for write, data in held:
            try:
                write(data)
            except (RuntimeError, OSError):  # closed since: its peer is gone (connection_lost tells the rest)
                pass

    def __len__(self) -> int:
        return len(self._held)


def held_writes_of(protocol: object) -> HeldWrites | None:
    """The holder of a client connection's protocol (``ClientConnection.held_writes``); None for
    another protocol (aiohttp's own, in tests that serve an app without ``GatewayRunner``)."""
    return getattr(protocol, "held_writes", None)
