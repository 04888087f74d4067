"""The progress display: one line rewritten in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total_jobs: int, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.total = total_jobs
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.index = 0
        self.started = time.monotonic()
        self._label = ""

    def note(self, text: str) -> None:
        """A message on a line of its own."""
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def job(self, label: str, target: str) -> None:
        self.index += 1
        self._label = f"[{self.index}/{self.total}] {label:<14} {target:<14}"
        self.update(0, 0)

    def update(self, done: int, of: int) -> None:
        if self.quiet or not self.tty:
            return
        elapsed = time.monotonic() - self.started
        count = f"{done:>7}/{of}" if of and of < 10**9 else f"{done:>7}"
        self.stream.write(f"\r\033[K{self._label} {count} req  (total {elapsed:5.0f}s)")
        self.stream.flush()

    def done(self, summary: str) -> None:
        if self.quiet:
            return
        line = f"{self._label} {summary}"
        if self.tty:
            self.stream.write(f"\r\033[K{line}\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
