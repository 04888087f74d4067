"""Log lines that are safe to write: keys masked, repeated errors rate-limited.

Two rules for every log line the gateway writes about a client or an
upstream: it never holds a whole key (``display_prefix`` shows the start
people recognise it by, ``redact`` masks anything key-like in text that came
from outside), and an error a crowd of clients can cause (2,000 hang-ups,
malformed requests) is written once per ``interval`` with a count of the rest
(``throttled``), never once per client.
"""

from __future__ import annotations

import logging
import re
import time

__all__ = ["display_prefix", "redact", "throttled", "LogThrottle"]

# A run of key-ish characters long enough to be a secret (keys here are 20+ characters).
_SECRETISH = re.compile(r"[A-Za-z0-9_\-.~+/=]{16,}")


def display_prefix(key: str) -> str:
    """The start of a key, for people to recognise it (a third of it at most)."""
    return key[:max(4, min(12, len(key) // 3))]


def redact(text: str, limit: int = 200) -> str:
    """``text`` from outside (a request line, a header, an error message) with
    every long key-like run cut to its display prefix and "...", at most
    ``limit`` characters, control characters shown escaped (a log line is one line)."""
    text = _SECRETISH.sub(lambda m: display_prefix(m.group()) + "...", text)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


class LogThrottle:
    """At most one line per ``key`` every ``interval`` seconds; the next line
    written for that key says how many were left out in between.

    Keys are the caller's constants (a kind of event, never a client's
    address), so the table stays as small as the code that uses it.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: object,
            exc_info: BaseException | bool | None = None) -> bool:
        """Write the line unless ``key`` was written less than ``interval`` ago; True when written."""
        if not logger.isEnabledFor(level):
            return False
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        if skipped and last is not None:
            msg += f" ({skipped} more like this in the last {now - last:.0f}s not shown)"
        logger.log(level, msg, *args, exc_info=exc_info)
        return True


_default = LogThrottle()


def throttled(logger: logging.Logger, level: int, key: str, msg: str, *args: object,
              exc_info: BaseException | bool | None = None) -> bool:
    """``LogThrottle.log`` on the process-wide throttle (one line per key every 10 s)."""
    return _default.log(logger, level, key, msg, *args, exc_info=exc_info)
