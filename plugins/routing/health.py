"""Deployment health: one circuit breaker per deployment.

closed -> open when, over the last ``window`` seconds, at least
``min_requests`` answers came and the share of failures reached
``error_rate`` (never on one error). open -> half-open after the cooldown
(or the upstream's ``Retry-After``, whichever is longer). half-open lets at
most ``half_open_probes`` real requests through at a time: a success closes
the breaker, a failure opens it again with the cooldown doubled (up to
``max_cooldown``) for every re-open in a row.

``HealthBoard`` is the state behind a small interface (``available``,
``acquire``, ``release``, ``record``, ``retry_in``, ``snapshot``), each
taking ``now`` (the routing plugin's clock), so tests drive cooldowns
without sleeping. Transitions are told to ``listeners`` as ``HealthEvent``;
with Redis counters ``shared_health.py`` sends this board's openings and
closings to the other instances and brings theirs in (``take``), so the
request path reads memory only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .options import HealthOptions

__all__ = ["Breaker", "HealthBoard", "HealthEvent"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
BUCKETS = 10  # the window is counted in this many slices


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A breaker changed state: ``state`` is "open", "half_open" or "closed"."""

    deployment: str
    previous: str
    state: str
    reason: str
    retry_in: float = 0.0  # seconds until an open breaker lets probes through
    remote: bool = False  # taken from another instance (shared health, see shared_health.py)


class Breaker:
    """One deployment's breaker and its counts over the window."""

    __slots__ = ("state", "open_until", "reopens", "probes", "slice_s", "bucket_at", "ok", "failed", "last_error")

    def __init__(self, window: float) -> None:
        self.state = CLOSED
        self.open_until = 0.0
        self.reopens = 0  # re-opens in a row (half-open probe failed)
        self.probes = 0  # half-open probes in flight
        self.slice_s = window / BUCKETS
        self.bucket_at = [-1] * BUCKETS  # which slice of time each bucket counts
        self.ok = [0] * BUCKETS
        self.failed = [0] * BUCKETS
        self.last_error: str | None = None

    def count(self, now: float, failed: bool) -> None:
        n = int(now // self.slice_s)
        i = n % BUCKETS
        if self.bucket_at[i] != n:
            self.bucket_at[i] = n
            self.ok[i] = self.failed[i] = 0
        if failed:
            self.failed[i] += 1
        else:
            self.ok[i] += 1

    def totals(self, now: float) -> tuple[int, int]:
        """(answers, failures) over the window."""
        oldest = int(now // self.slice_s) - BUCKETS + 1
        total = fails = 0
        for i in range(BUCKETS):
            if self.bucket_at[i] >= oldest:
                total += self.ok[i] + self.failed[i]
                fails += self.failed[i]
        return total, fails

    def reset_counts(self) -> None:
        self.bucket_at = [-1] * BUCKETS


class HealthBoard:
    """The breakers of one process (memory). Deployments are named by the routing plugin."""

    def __init__(self, options: HealthOptions) -> None:
        self.options = options
        self.breakers: dict[str, Breaker] = {}
        self.listeners: list[Callable[[HealthEvent], None]] = []

    def breaker(self, deployment: str) -> Breaker:
        b = self.breakers.get(deployment)
        if b is None:
            b = self.breakers[deployment] = Breaker(self.options.window)
        return b

    def available(self, deployment: str, now: float) -> bool:
        """May a new request go to it (closed, or half-open with a probe slot free)?"""
        b = self.breakers.get(deployment)
        if b is None or b.state == CLOSED:
            return True
        if b.state == OPEN:
            if now < b.open_until:
                return False
            self._move(deployment, b, HALF_OPEN, "cooldown over: probing")
        return b.probes < self.options.half_open_probes

    def acquire(self, deployment: str, now: float) -> bool:
        """A request goes to it (``available`` said yes): True when it is a half-open probe."""
        b = self.breakers.get(deployment)
        if b is None or b.state != HALF_OPEN:
            return False
        b.probes += 1
        return True

    def release(self, deployment: str) -> None:
        """A probe that never reached the upstream (refused before, or answered from a cache)."""
        b = self.breakers.get(deployment)
        if b is not None and b.probes > 0:
            b.probes -= 1

    def succeeded(self, deployment: str, now: float, probe: bool) -> None:
        """``record`` of a success (the usual answer): a closed breaker only counts it."""
        b = self.breakers.get(deployment)
        if b is not None and b.state == CLOSED:
            b.count(now, False)
        else:
            self.record(deployment, now, False, probe)

    def record(self, deployment: str, now: float, failed: bool, probe: bool, error: str | None = None,
               retry_after: float | None = None) -> None:
        """An answer from the deployment: ``failed`` when it counts against its health."""
        b = self.breaker(deployment)
        if failed:
            b.last_error = error
        if b.state == HALF_OPEN:
            if not probe:
                return  # a request sent before it opened: the probes decide
            b.probes = max(0, b.probes - 1)
            if failed:
                b.reopens += 1
                self._open(deployment, b, now, retry_after, f"probe failed ({error})")
            else:
                b.reopens = 0
                b.reset_counts()
                self._move(deployment, b, CLOSED, "probe succeeded")
            return
        if b.state == OPEN:
            return  # stragglers sent before it opened
        b.count(now, failed)
        if not failed:
            return
        total, fails = b.totals(now)
        opts = self.options
        if total >= opts.min_requests and fails >= opts.error_rate * total:
            self._open(deployment, b, now, retry_after, f"{fails} of the last {total} answers failed ({error})")

    def take(self, deployment: str, state: str, retry_in: float, now: float, reason: str) -> None:
        """Another instance's breaker opened (for ``retry_in`` more seconds) or closed: follow it."""
        b = self.breakers.get(deployment)
        if state == OPEN:
            if retry_in <= 0:
                return  # its cooldown is over: the probes decide, here as there
            if b is None:
                b = self.breaker(deployment)
            if b.state == OPEN:
                b.open_until = max(b.open_until, now + retry_in)
                return
            b.open_until = now + retry_in
            b.probes = 0
            b.reset_counts()
            self._move(deployment, b, OPEN, f"on another instance: {reason}", retry_in, remote=True)
        elif state == CLOSED and b is not None and b.state != CLOSED:
            b.reopens = b.probes = 0
            b.reset_counts()
            self._move(deployment, b, CLOSED, f"on another instance: {reason}", remote=True)

    def retry_in(self, deployment: str, now: float) -> float:
        """Seconds until the deployment takes requests again (0 when it does now)."""
        b = self.breakers.get(deployment)
        if b is None or b.state != OPEN:
            return 0.0
        return max(0.0, b.open_until - now)

    def snapshot(self, now: float) -> dict[str, dict]:
        out = {}
        for name, b in self.breakers.items():
            total, fails = b.totals(now)
            out[name] = {"state": b.state, "retry_in": round(self.retry_in(name, now), 3), "requests": total,
                         "failures": fails, "reopens": b.reopens, "probes_in_flight": b.probes,
                         "last_error": b.last_error}
        return out

    def _open(self, deployment: str, b: Breaker, now: float, retry_after: float | None, reason: str) -> None:
        opts = self.options
        cooldown = min(opts.max_cooldown, opts.cooldown * (2 ** min(b.reopens, 30)))
        if retry_after is not None:
            cooldown = max(cooldown, min(retry_after, opts.max_cooldown))
        b.open_until = now + cooldown
        b.probes = 0
        b.reset_counts()
        self._move(deployment, b, OPEN, reason, cooldown)

    def _move(self, deployment: str, b: Breaker, state: str, reason: str, retry_in: float = 0.0,
              remote: bool = False) -> None:
        previous, b.state = b.state, state
        event = HealthEvent(deployment, previous, state, reason, retry_in, remote)
        for listener in self.listeners:
            listener(event)
