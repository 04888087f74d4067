"""A provider's pool of upstream API keys (``providers.<name>.api_keys``).

Keys are used in turn (round robin). A key the upstream answered 429 rests
until its ``Retry-After`` (at least ``MIN_REST_S``) and the request moves on
to the next key at once: a 429 is never billed, and the client need not
hear of one key's limit while another key has room. When every key rests,
the request goes to the one whose rest ends first (the upstream decides).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

__all__ = ["KeyPool", "retry_after_seconds"]

MIN_REST_S = 1.0
MAX_REST_S = 3600.0


def retry_after_seconds(value: str | None, now_wall: float | None = None) -> float | None:
    """Seconds an upstream's ``Retry-After`` (delay seconds or an HTTP date) asks for, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value[:9])
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    now = time.time() if now_wall is None else now_wall
    return max(0.0, when.timestamp() - now)


class KeyPool:
    """The keys of one provider and when each may be used again."""

    __slots__ = ("keys", "resting_until", "next_index", "clock", "on_rest")

    def __init__(self, keys: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = list(keys)
        self.resting_until = [0.0] * len(self.keys)
        self.next_index = 0
        self.clock = clock
        #: ``on_rest(index, seconds)`` after a 429 rests a key (the routing plugin tells a fleet).
        self.on_rest: Callable[[int, float], None] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def order(self) -> list[int]:
        """Indexes of the keys to try for one request: the rested ones in turn from
        the next in line, then (when all rest) the one whose rest ends first."""
        n = len(self.keys)
        start = self.next_index
        self.next_index = (start + 1) % n
        now = self.clock()
        ready = [(start + i) % n for i in range(n) if self.resting_until[(start + i) % n] <= now]
        if ready:
            return ready
        return [min(range(n), key=self.resting_until.__getitem__)]

    def used(self, index: int) -> None:
        """Key ``index`` answered: the next request starts from the key after it."""
        self.next_index = (index + 1) % len(self.keys)

    def rest(self, index: int, retry_after: str | None) -> None:
        """Key ``index`` was answered 429: rest it for its Retry-After (bounded)."""
        seconds = retry_after_seconds(retry_after)
        seconds = MIN_REST_S if seconds is None else min(max(seconds, MIN_REST_S), MAX_REST_S)
        self.resting_until[index] = self.clock() + seconds
        if self.on_rest is not None:
            self.on_rest(index, seconds)

    def rest_for(self, index: int, seconds: float) -> None:
        """Key ``index`` rests ``seconds`` more (another instance was answered 429 with it)."""
        if 0 <= index < len(self.keys):
            self.resting_until[index] = max(self.resting_until[index], self.clock() + min(seconds, MAX_REST_S))
