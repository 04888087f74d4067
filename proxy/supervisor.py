"""The parent of ``tollway serve --workers N``: keeps N worker processes running.

A worker that ends on its own (kill -9, OOM, a crash) is reaped at once, whichever it is,
reported in one line and replaced by a new one started the same way. Workers that die in a
loop (more than ``CRASH_LIMIT`` deaths within ``CRASH_WINDOW_S``) are restarted after a
growing delay (``BACKOFF_S``); when deaths go on after the longest delay the parent stops the
remaining workers and exits 1, saying why (a service manager then decides what to do).

SIGTERM/SIGINT are passed on to every worker, no worker is started any more, and the parent
exits once they have all ended (those still running ``shutdown_timeout`` + a margin later are
killed). SIGHUP (reload) is passed on to every worker."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence

CRASH_LIMIT = 5
CRASH_WINDOW_S = 30.0
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
STOP_MARGIN_S = 5.0  # after shutdown_timeout (and the workers' own grace), before kill -9
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
    SIGTERM/SIGINT (see the module docstring). ``run()`` returns the exit status."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str], count: int, stop_timeout: float) -> None:
        self.cmd = list(cmd)
        self.env = env
        self.count = count
        self.stop_timeout = stop_timeout + STOP_MARGIN_S
        self.workers: dict[int, subprocess.Popen] = {}
        self.deaths: deque[float] = deque()  # monotonic times of the recent unexpected exits
        self.backoff_level = 0
        self.starts_due: list[float] = []  # monotonic times replacements are to be started at
        self.signals: deque[int] = deque()
        self.stop_deadline: float | None = None
        self.gave_up = False

    # -- processes ------------------------------------------------------------------

    def start_worker(self, now: float) -> None:
        # Ignored (not handled) signals stay ignored across exec: a reload SIGHUP reaching a
        # worker before it listens for one must not end it (SIGHUP's default action).
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            child = subprocess.Popen(self.cmd, env=self.env)
        except OSError as exc:  # e.g. no memory or no process left to fork: as if it died at once
            self.worker_died("a new worker", f"could not be started ({exc.strerror})", now)
            return
        finally:
            signal.signal(signal.SIGHUP, previous)
        self.workers[child.pid] = child

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

    def worker_died(self, who: str, how: str, now: float) -> None:
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - CRASH_WINDOW_S:
            self.deaths.popleft()
        if len(self.deaths) <= CRASH_LIMIT:
            self.backoff_level = 0
            say(f"{who} {how}; starting a new one")
            self.starts_due.append(now)
            return
        if self.backoff_level >= len(BACKOFF_S):
            say(f"{who} {how}; workers keep dying ({len(self.deaths)} deaths in "
                f"{CRASH_WINDOW_S:g} s, even {BACKOFF_S[-1]:g} s apart): giving up, stopping "
                f"the other workers (see the workers' messages above for why they die)")
            self.gave_up = True
            self.begin_stop(signal.SIGTERM, now)
            return
        delay = BACKOFF_S[self.backoff_level]
        self.backoff_level += 1
        say(f"{who} {how}; {len(self.deaths)} worker deaths in {CRASH_WINDOW_S:g} s: "
            f"backing off, starting a new one in {delay:g} s")
        self.starts_due.append(now + delay)

    def begin_stop(self, sig: int, now: float) -> None:
        if self.stop_deadline is None:
            self.stop_deadline = now + self.stop_timeout
        self.starts_due.clear()
        self.send_all(sig)

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
            for sig, handler in previous.items():
                signal.signal(sig, handler)
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
                self.worker_died(f"worker {child.pid}", describe_exit(child.returncode), now)
            else:
                codes.append(child.returncode)
        if self.stop_deadline is None:
            for due in [t for t in self.starts_due if t <= now]:
                self.starts_due.remove(due)
                self.start_worker(now)
        elif now >= self.stop_deadline and self.workers:
            say(f"{len(self.workers)} worker(s) still running {self.stop_timeout:g} s after the stop: killing them")
            self.send_all(signal.SIGKILL)
            for child in list(self.workers.values()):
                child.wait()
                codes.append(child.returncode)
            self.workers.clear()
        return codes
