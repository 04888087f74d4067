"""The model calls in flight, so that stopping is bounded by ``server.shutdown_timeout``.

On SIGTERM the server stops accepting, then ``wind_down`` waits for the calls
in flight to finish, up to ``shutdown_timeout``. Those still running then
are stopped: each is marked (``call.response.shutdown``) and its task
cancelled; a stream ends with an in-band ``gateway_shutting_down`` error and
is billed for the output that went out (the pump treats it as a cut), a
call still waiting for its upstream answers 503 and costs nothing. A client
that does not take that last error within ``GRACE_S`` loses its connection.
Then the ledger is flushed and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .errors import ProxyError

if TYPE_CHECKING:
    from .call import Call

log = logging.getLogger("tollway")

GRACE_S = 2.0  # after the cancel: for the in-band error to be written and the call billed


def uncancel() -> None:
    """Take back the cancellation the shutdown sent to the current task (it answers instead)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def shutdown_error() -> ProxyError:
    return ProxyError(503, "the gateway is shutting down (server.shutdown_timeout passed); retry the request",
                      code="gateway_shutting_down")


class InFlight:
    """Handler tasks of the model calls being answered (one dict entry each)."""

    __slots__ = ("calls", "_idle", "_loop")

    def __init__(self) -> None:
        self.calls: dict[asyncio.Task, Call] = {}
        self._idle: asyncio.Event | None = None  # made only while winding down
        # The loop of the first call (a gateway serves on one): ``current_task(loop)`` skips the
        # running loop's look-up, whose check for a fork is a getpid system call (~250 ns).
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self, call: Call) -> asyncio.Task | None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:  # (not in a task of that loop: another loop's, or none)
            self._loop = None
            task = asyncio.current_task()
        if task is not None:
            self.calls[task] = call
        return task

    def leave(self, task: asyncio.Task | None) -> None:
        if task is not None:
            self.calls.pop(task, None)
        if self._idle is not None and not self.calls:
            self._idle.set()

    async def wind_down(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the calls to end; then stop the rest."""
        if not self.calls:
            return
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return
        except TimeoutError:
            pass
        log.warning("shutdown_timeout (%gs) passed: stopping %d call(s) still in flight", timeout, len(self.calls))
        for task, call in list(self.calls.items()):
            call.response.shutdown = True
            task.cancel()
        try:
            async with asyncio.timeout(GRACE_S):
                await self._idle.wait()
        except TimeoutError:
            for call in list(self.calls.values()):  # clients that do not take the last bytes
                transport = call.request.transport if call.request is not None else None
                if transport is not None:
                    transport.abort()
            await asyncio.sleep(0)
