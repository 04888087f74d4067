"""The parent of ``tollway serve --workers N``: keeps N worker processes running.

A worker that ends on its own (kill -9, OOM, a crash) is reaped at once, whichever it is,
reported in one line and replaced by a new one started the same way. Workers that die in a
loop (more than ``CRASH_LIMIT`` deaths in a row of workers that ran less than
``SHORT_LIFE_S``) are restarted after a growing delay (``BACKOFF_S``); when deaths go on
after the longest delay the parent stops the remaining workers and exits 1, saying why (a
service manager then decides what to do). A worker's life, not a window of time, says it:
on a loaded machine a worker that fails at start may take 20 s to do so, and deaths that
slow never filled a 30 s window.

SIGTERM/SIGINT are passed on to every worker, no worker is started any more, and the parent
exits once they have all ended (those still running past their own stop limit, see
proxy/stopping.py, are killed: the limit each worker wrote as its stop began, from the
shutdown_timeout it has then, reloaded or not). SIGHUP (reload) is passed on to every worker.
A parent that ends without stopping them (kill -9) takes them with it: each worker gets
SIGTERM from the kernel and stops as above.

``run()`` is meant to end the process: the stop signals stay ignored after it."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from .processes import die_with_parent
from .stopping import ignore_until_exit, told_stop_limits

CRASH_LIMIT = 5
SHORT_LIFE_S = 30.0  # a worker that dies sooner counts toward CRASH_LIMIT; one that lived longer resets
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
STOP_MARGIN_S = 2.0  # after a worker's own stop limit, before kill -9: a stuck worker exits by itself
# first (proxy/stopping.py), saying where it waited
POLL_S = 1.0  # a safety net: children are looked at this often even without SIGCHLD


def describe_exit(returncode: int) -> str:
    """``exited with status 3`` / ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def say(text: str) -> None:
    print(f"tollway: {text}", file=sys.stderr, flush=True)


class WorkerSupervisor:
    """Starts ``count`` processes running ``cmd`` with ``env`` and keeps them running until
    SIGTERM/SIGINT (see the module docstring). ``run()`` returns the exit status. ``stop_timeout``:
    how long a worker's stop may take, as the config said at start; ``shared``: the workers'
    directory, where each stopping worker writes its own (``proxy/stopping.py``)."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str], count: int, stop_timeout: float,
                 shared: Path | None = None) -> None:
        self.cmd = list(cmd)
        self.env = env
        self.count = count
        self.stop_timeout = stop_timeout
        self.shared = shared
        self.workers: dict[int, subprocess.Popen] = {}
        self.started: dict[int, float] = {}  # pid -> monotonic start time
        self.short_deaths = 0  # in a row: workers that died within SHORT_LIFE_S of their start
        self.backoff_level = 0
        self.starts_due: list[float] = []  # monotonic times replacements are to be started at
        self.signals: deque[int] = deque()
        self.stop_began: float | None = None
        self.stop_deadline: float | None = None
        self.gave_up = False

    # -- processes ------------------------------------------------------------------

    def start_worker(self, now: float) -> None:
        parent = os.getpid()

        def in_the_child() -> None:  # between fork and exec (this process has no other thread)
            # Ignored (not handled) signals stay ignored across exec: a reload SIGHUP reaching a
            # worker before it listens for one must not end it (SIGHUP's default action).
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            # A parent killed with kill -9 cannot stop its workers: they stop themselves
            # (SIGTERM: in-flight requests finish, within shutdown_timeout), no orphan keeps the port.
            die_with_parent(parent)

        try:
            child = subprocess.Popen(self.cmd, env=self.env, preexec_fn=in_the_child)
        except OSError as exc:  # e.g. no memory or no process left to fork: as if it died at once
            self.worker_died("a new worker", f"could not be started ({exc.strerror})", now, now)
            return
        self.workers[child.pid] = child
        self.started[child.pid] = now

    def send_all(self, sig: int) -> None:
        for child in self.workers.values():
            if child.poll() is None:
                try:
                    child.send_signal(sig)
                except ProcessLookupError:
                    pass

    def reap(self) -> list[subprocess.Popen]:
        """The workers that have ended since last time (reaped: none is left a zombie)."""
        ended = [child for child in self.workers.values() if child.poll() is not None]
        for child in ended:
            del self.workers[child.pid]
        return ended

    # -- a worker's death -----------------------------------------------------------

    def worker_died(self, who: str, how: str, started: float, now: float) -> None:
        if now - started >= SHORT_LIFE_S:  # it served a while: not a loop (or no longer one)
            self.short_deaths = 0
            self.backoff_level = 0
        self.short_deaths += 1
        if self.short_deaths <= CRASH_LIMIT:
            say(f"{who} {how}; starting a new one")
            self.starts_due.append(now)
            return
        if self.backoff_level >= len(BACKOFF_S):
            say(f"{who} {how}; workers keep dying ({self.short_deaths} in a row within {SHORT_LIFE_S:g} s of "
                f"their start, even {BACKOFF_S[-1]:g} s apart): giving up, stopping the other workers (see "
                f"the workers' messages above for why they die)")
            self.gave_up = True
            self.begin_stop(signal.SIGTERM, now)
            return
        delay = BACKOFF_S[self.backoff_level]
        self.backoff_level += 1
        say(f"{who} {how}; {self.short_deaths} worker deaths in a row within {SHORT_LIFE_S:g} s of their start: "
            f"backing off, starting a new one in {delay:g} s")
        self.starts_due.append(now + delay)

    def begin_stop(self, sig: int, now: float) -> None:
        if self.stop_began is None:
            self.stop_began = now
            self.stop_deadline = now + self.stop_limit()
        self.starts_due.clear()
        self.send_all(sig)

    def stop_limit(self) -> float:
        """How long the stop may take before the workers still running are killed: the longest
        limit of a running worker as it wrote it when its stop began (from its shutdown_timeout
        then: a reload may have changed it since the start), the start's for one that has not
        written (yet), plus ``STOP_MARGIN_S``."""
        told = told_stop_limits(self.shared) if self.shared is not None else {}
        return max((told.get(pid, self.stop_timeout) for pid in self.workers), default=self.stop_timeout) \
            + STOP_MARGIN_S

    # -- the loop -------------------------------------------------------------------

    def run(self) -> int:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, lambda sig, _frame: self.signals.append(sig)) for sig in handled}
        old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        selector = selectors.DefaultSelector()
        selector.register(read_fd, selectors.EVENT_READ)
        codes: list[int] = []
        try:
            for _ in range(self.count):
                self.start_worker(time.monotonic())
            while self.workers or (self.starts_due and self.stop_deadline is None):
                now = time.monotonic()
                selector.select(self.wait_for(now))
                try:
                    os.read(read_fd, 4096)
                except BlockingIOError:
                    pass
                codes.extend(self.step(time.monotonic()))
        finally:
            signal.set_wakeup_fd(old_wakeup)
            signal.signal(signal.SIGCHLD, previous[signal.SIGCHLD])
            # The process ends after run(): a late SIGTERM (a service manager repeating itself)
            # must not turn its exit status into a kill, as restoring the default action would.
            ignore_until_exit()
            selector.close()
            os.close(read_fd)
            os.close(write_fd)
        if self.gave_up:
            return 1
        # A worker still starting when the stop came ends by the signal itself: a clean stop too.
        clean = (0, -signal.SIGTERM, -signal.SIGINT)
        return 0 if all(code in clean for code in codes) else 1

    def wait_for(self, now: float) -> float:
        due = [POLL_S]
        if self.starts_due and self.stop_deadline is None:
            due.append(min(self.starts_due) - now)
        if self.stop_deadline is not None:
            due.append(self.stop_deadline - now)
        return max(0.0, min(due))

    def step(self, now: float) -> list[int]:
        """Handles the signals received, the workers ended and the starts due; returns the
        exit statuses of the workers that ended while stopping."""
        while self.signals:
            sig = self.signals.popleft()
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.begin_stop(sig, now)
            elif sig == signal.SIGHUP:
                self.send_all(signal.SIGHUP)  # reload: every worker reads the file again
        codes = []
        for child in self.reap():
            if self.stop_deadline is None:
                self.worker_died(f"worker {child.pid}", describe_exit(child.returncode),
                                 self.started.pop(child.pid, now), now)
            else:
                codes.append(child.returncode)
        if self.stop_deadline is None:
            for due in [t for t in self.starts_due if t <= now]:
                self.starts_due.remove(due)
                self.start_worker(now)
        elif self.workers and self.stop_began is not None:
            limit = self.stop_limit()  # the workers say theirs as they begin to stop: looked at every time
            self.stop_deadline = self.stop_began + limit
            if now < self.stop_deadline:
                return codes
            say(f"{len(self.workers)} worker(s) still running {limit:g} s after the stop: killing them")
            self.send_all(signal.SIGKILL)
            for child in list(self.workers.values()):
                child.wait()
                codes.append(child.returncode)
            self.workers.clear()
        return codes
