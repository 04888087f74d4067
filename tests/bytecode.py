"""Compiled modules kept between the processes a run starts.

Many tests start real processes (``tollway serve``, the CLI, the benchmarks' mock): each one
compiled every module of ``proxy/`` and ``plugins/`` from source again when the environment
says ``PYTHONDONTWRITEBYTECODE`` (this host's does): ~0.3 s of a server's ~0.8 s start. With
the variable unset for the run, the first process to import a module writes its
``__pycache__`` (git ignores it) and the others read it, as Python does by default; Python
checks each cached file against its source's modification time and size. The standard
library's and the virtualenv's bytecode (written at install) are read either way."""

from __future__ import annotations

import os
import sys


def keep_bytecode() -> None:
    """In this process and the ones it starts from now on (xdist workers, servers, CLIs)."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
