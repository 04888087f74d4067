"""Other processes: whether one runs; a child that ends with its parent."""

from __future__ import annotations

import ctypes
import os
import signal

__all__ = ["die_with_parent", "process_running"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: alive as far as we can tell
    return state not in (b"Z", b"X")  # a zombie, or dead


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """In a child process (e.g. a ``subprocess.Popen`` ``preexec_fn``): be sent ``sig`` when
    the parent ``parent`` ends, however it ends (kill -9 too), so that no orphan is left
    running. If the parent already ended before this call (the child was handed to another
    parent), ``sig`` comes at once. Linux only (prctl); elsewhere it does nothing. The death
    signal follows the thread that started the child: start it from the main thread."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # the parent ended between the fork and the prctl
        os.kill(os.getpid(), sig)
