"""Dashboard sessions, CSRF tokens and the sign-in rate limit.

A session is a random id the browser holds in an HttpOnly, SameSite=Strict
cookie; the server keeps what it means (who signed in, the CSRF token, when
it expires) in memory, under the SHA-256 of the id. The admin key and API
keys are never stored in the browser. Sessions live as long as the process
(a restart signs everyone out) and expire after ``session_hours``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

COOKIE = "tollway_session"
MAX_SESSIONS = 10_000
MAX_TRACKED_CLIENTS = 10_000


@dataclass(slots=True)
class Session:
    kind: str  # "admin" or "customer"
    key_id: str | None  # the customer's key
    csrf: str
    expires: float
    admin_mark: str = ""  # which admin key signed in (a change of admin_key ends the session)
    created: float = field(default_factory=time.time)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def admin_mark(admin_key: str) -> str:
    """A fingerprint of the admin key (not the key) to tie sessions to it."""
    return hashlib.sha256(b"tollway-dashboard\0" + admin_key.encode()).hexdigest()[:32]


class Sessions:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._by_digest: dict[str, Session] = {}

    def create(self, kind: str, key_id: str | None = None, mark: str = "") -> tuple[str, Session]:
        """A new session; returns (the id for the cookie, the session)."""
        now = time.time()
        if len(self._by_digest) >= MAX_SESSIONS:
            self._purge(now)
        if len(self._by_digest) >= MAX_SESSIONS:  # still full: the oldest goes
            oldest = min(self._by_digest, key=lambda d: self._by_digest[d].created)
            del self._by_digest[oldest]
        token = secrets.token_urlsafe(32)
        session = Session(kind, key_id, secrets.token_urlsafe(32), now + self.ttl, mark)
        self._by_digest[_digest(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 128:
            return None
        digest = _digest(token)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        if session.expires <= time.time():
            del self._by_digest[digest]
            return None
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._by_digest.pop(_digest(token), None)

    def end_for_key(self, key_id: str) -> None:
        """Sign out every customer session of a key (revoked, disabled)."""
        for digest in [d for d, s in self._by_digest.items() if s.key_id == key_id]:
            del self._by_digest[digest]

    def _purge(self, now: float) -> None:
        for digest in [d for d, s in self._by_digest.items() if s.expires <= now]:
            del self._by_digest[digest]

    def __len__(self) -> int:
        return len(self._by_digest)


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), given.encode())


class SignInLimiter:
    """At most ``attempts`` failed sign-ins per client address in ``window``
    seconds; over it, every attempt (even a right key) is refused until the
    oldest failure ages out, so guessing cannot continue at any speed."""

    def __init__(self, attempts: int, window: float) -> None:
        self.attempts = attempts
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: now)."""
        failures = self._failures.get(client)
        if not failures:
            return 0
        now = time.monotonic()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.attempts:
            return 0
        return max(1, int(failures[0] + self.window - now + 0.999))

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= MAX_TRACKED_CLIENTS:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(client, deque()).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
