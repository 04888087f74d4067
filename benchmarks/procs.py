"""Child processes of the harness: start, pin to CPUs, wait until listening, stop.

Every child gets its own session (a Ctrl-C in the terminal reaches only the
harness, which then stops the children in order) and, on Linux, a parent-death
signal, so even a harness killed with SIGKILL leaves nothing behind. Output
goes to a log file per child (never an unread pipe that could fill and block).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LISTENING = re.compile(r"https?://127\.0\.0\.1:(\d+)")


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


PREEXEC = _die_with_parent if sys.platform.startswith("linux") else None


def pin(pid: int, cpus: set[int] | None) -> None:
    """Restrict ``pid`` to ``cpus`` (no-op when None or unsupported)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


def cpu_plan(enabled: bool) -> dict[str, set[int] | None]:
    """Which CPUs each role gets. The target under test always gets a CPU of
    its own; the load generator and the mock upstream share the rest (they are
    much cheaper per request than a proxy, which is both server and client)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not enabled or len(cpus) < 2:
        return {"loadgen": None, "mock": None, "target": None}
    if len(cpus) == 2:
        return {"loadgen": {cpus[0]}, "mock": {cpus[0]}, "target": {cpus[1]}}
    return {"loadgen": {cpus[0]}, "mock": {cpus[1]}, "target": {cpus[2]}}


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log: Path
    url: str = ""  # http://127.0.0.1:PORT once listening

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class Children:
    """The harness's children; ``stop_all`` ends every one of them."""

    logdir: Path
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        atexit.register(self.stop_all)

    def spawn(self, name: str, argv: list[str], *, cpus: set[int] | None = None, env: dict | None = None,
              stdout=None, cwd: Path | None = None) -> Child:
        log = self.logdir / f"{name}.log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(argv, stdout=stdout if stdout is not None else fh, stderr=fh,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                     start_new_session=True, preexec_fn=PREEXEC, cwd=cwd)
        pin(popen.pid, cpus)
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def start_server(self, name: str, argv: list[str], *, cpus: set[int] | None = None, env: dict | None = None,
                     timeout: float = 30.0, cwd: Path | None = None) -> Child:
        """Spawn a server that prints ``http://127.0.0.1:PORT`` once listening; wait for it."""
        log = self.logdir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0  # logs append: read only this run's lines
        child = self.spawn(name, argv, cpus=cpus, env=env, cwd=cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(log, "rb") as fh:
                fh.seek(offset)
                match = LISTENING.search(fh.read().decode(errors="replace"))
            if match:
                child.url = f"http://127.0.0.1:{match.group(1)}"
                return child
            if child.popen.poll() is not None:
                raise StartError(f"{name} exited with status {child.popen.returncode} before listening:\n"
                                 f"{child.log_tail()}")
            time.sleep(0.05)
        self.stop(child)
        raise StartError(f"{name} did not listen within {timeout:g}s:\n{child.log_tail()}")

    def stop(self, child: Child, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if child.popen.poll() is None:
            try:
                child.popen.terminate()
                child.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait(5)
            except ProcessLookupError:
                pass
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        # The newest first: targets before the upstream they talk to.
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception:  # keep stopping the others
                child.popen.kill()


class StartError(RuntimeError):
    """A child did not come up; the message carries the tail of its log."""
