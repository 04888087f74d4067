"""How ``tollway serve`` stops: the first SIGTERM or SIGINT starts it, a later one changes
nothing but a line in the log, and the process exits by a deadline whatever it waits for.

Why the signal handler stays in place, never removed: removing an event loop's handler
restores the signal's default action, which for SIGTERM ends the process at once. A supervisor
that repeats its SIGTERM (or an operator pressing Ctrl-C twice) would then kill a process
half-way through finishing its in-flight requests, with an exit status of -15 and nothing said."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .inflight import GRACE_S

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CLOSE_S = 5.0  # after the calls in flight had their time: for the last writes (the ledger's flush)
STOP_LIMITS_DIR = "stop-limits"  # in the workers' shared directory: a file per stopping worker


class StopSignals:
    """``listen()`` in the running loop, then ``await requested.wait()``."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.repeated = False

    def listen(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.on_signal)

    def on_signal(self) -> None:
        if not self.requested.is_set():
            self.requested.set()
        elif not self.repeated:
            self.repeated = True
            print("tollway: already stopping (within server.shutdown_timeout); the signal changes nothing",
                  file=sys.stderr, flush=True)


def ignore_until_exit() -> None:
    """Once the server has stopped: ignore the stop signals and SIGHUP for the rest of the
    process, so a late one cannot turn a clean exit into a kill. Not left to the loop's handlers:
    Python's exit restores their default actions while libuv's worker threads (which do not block
    signals) still run, and asyncio's own loop restores them when it closes. Idempotent."""
    for sig in (*STOP_SIGNALS, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def stop_limit(shutdown_timeout: float) -> float:
    """How long a stop may take: ``shutdown_timeout`` for the calls in flight, ``GRACE_S`` for
    their last bytes, ``GRACE_S`` for aiohttp's handlers to end, ``CLOSE_S`` for the last writes."""
    return shutdown_timeout + 2 * GRACE_S + CLOSE_S


def tell_stop_limit(shared: Path, shutdown_timeout: float) -> None:
    """In a worker of ``tollway serve --workers N``, as its stop begins: write how long the stop
    may take (``stop_limit`` of the shutdown_timeout it has now, which a reload may have changed
    since the parent started) where the parent reads it (``told_stop_limits``) before it kills a
    worker still stopping. A write that fails leaves the parent to the value it started with."""
    folder = shared / STOP_LIMITS_DIR
    try:
        folder.mkdir(exist_ok=True)
        temp = folder / f".{os.getpid()}"
        temp.write_text(repr(stop_limit(shutdown_timeout)))
        os.replace(temp, folder / str(os.getpid()))  # whole or not at all for the reader
    except OSError:
        pass


def told_stop_limits(shared: Path) -> dict[int, float]:
    """pid -> the stop limit (seconds) each stopping worker wrote with ``tell_stop_limit``."""
    told: dict[int, float] = {}
    try:
        entries = list((shared / STOP_LIMITS_DIR).iterdir())
    except OSError:
        return told
    for entry in entries:
        if entry.name.isdigit():
            try:
                told[int(entry.name)] = float(entry.read_text())
            except (OSError, ValueError):
                pass
    return told


def exit_by_deadline(shutdown_timeout: float) -> asyncio.TimerHandle:
    """The last resort of a stop: a process still stopping ``stop_limit`` after the signal says
    what it waits for and exits with status 1 (what it had not written is lost, as with a
    kill). Cancel the returned handle once stopped."""
    limit = stop_limit(shutdown_timeout)

    def give_up() -> None:
        print(f"tollway: still stopping {limit:g} s after the signal (server.shutdown_timeout {shutdown_timeout:g} s "
              f"+ {limit - shutdown_timeout:g} s): exiting now; waiting in: {waiting_in()}",
              file=sys.stderr, flush=True)
        os._exit(1)

    return asyncio.get_running_loop().call_later(limit, give_up)


def waiting_in() -> str:
    """Where each pending task of the running loop waits: ``name (file:line function)``, the
    innermost frame outside asyncio itself (an ``Event.wait`` says nothing; its caller does)."""
    asyncio_dir = os.path.dirname(asyncio.__file__)
    places = []
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        where = "?"
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None and os.path.dirname(frame.f_code.co_filename) != asyncio_dir:
                where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        places.append(f"{task.get_name()} ({where})")
    return "; ".join(sorted(places)) or "nothing"
