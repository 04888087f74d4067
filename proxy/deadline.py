"""``Deadline``: a cheaper ``asyncio.timeout_at`` for the hot path."""

from __future__ import annotations

import asyncio


class Deadline:
    """Cancel the current task at ``when`` (loop time); leaving the block by
    that cancellation raises TimeoutError. ``asyncio.timeout_at`` with fewer
    steps: it is armed once or twice per request on the hot path."""

    __slots__ = ("_when", "_loop", "_task", "_handle", "fired")

    _task: asyncio.Task
    _handle: asyncio.TimerHandle

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._loop = loop
        self._when = when
        self.fired = False  # this deadline passed (not an outer one)

    def __enter__(self) -> Deadline:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline is for code running in a task")
        self._task = task
        self._handle = self._loop.call_at(self._when, self._fire)
        return self

    def _fire(self) -> None:
        self.fired = True
        self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._handle.cancel()
        if self.fired and exc_type is asyncio.CancelledError:
            self._task.uncancel()
            raise TimeoutError


class DeadlineQueue:
    """Deadlines that come in the order they are due (one timeout after each start: a
    provider's first_byte), under one timer for all of them: ``watch(task, when)`` cancels
    ``task`` at ``when`` unless ``unwatch`` came first. A loop timer costs ~1.6 µs to arm and
    cancel (uvloop: a libuv handle made and closed each time), a watch ~0.3 µs; the timer here
    is re-armed only when it fires, about once a timeout. A deadline earlier than one already
    watched (the timeout was shortened) gets a timer of its own.

    ``watch`` returns the deadline's record, ``[when, fired, own timer or None]``: ``record[1]``
    is True once it fired. (A list: made and read on every upstream request.)"""

    __slots__ = ("_loop", "_waiting", "_last", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: dict[asyncio.Task, list] = {}  # oldest first: the order they are due
        self._last = 0.0  # the latest deadline watched
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, task: asyncio.Task, when: float) -> list:
        record: list = [when, False, None]
        if when < self._last and self._waiting:  # out of order: on its own timer
            record[2] = self._loop.call_at(when, _fire, task, record)
            return record
        self._waiting[task] = record
        self._last = when
        if self._timer is None:
            self._timer = self._loop.call_at(when, self._expire)
        return record

    def unwatch(self, task: asyncio.Task, record: list) -> None:
        own = record[2]
        if own is not None:
            own.cancel()
        elif self._waiting.get(task) is record:
            del self._waiting[task]

    def _expire(self) -> None:
        self._timer = None
        # (a deadline within a millisecond is due: the loop's clock and timers run in milliseconds)
        due = self._loop.time() + 0.001
        waiting = self._waiting
        while waiting:
            task, record = next(iter(waiting.items()))
            if record[0] > due:
                self._timer = self._loop.call_at(record[0], self._expire)
                return
            del waiting[task]
            _fire(task, record)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _fire(task: asyncio.Task, record: list) -> None:
    record[1] = True
    task.cancel()
