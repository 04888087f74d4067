"""Dashboard sessions, CSRF tokens and the sign-in rate limit, kept in the gateway's store.

A session is a random id the browser holds in an HttpOnly, SameSite=Strict
cookie; the store keeps what it means (who signed in, the CSRF token, when
it expires) under the SHA-256 of the id, so a stolen database holds no
usable cookie. Being in the store (not in a process's memory) is what lets
a session work on every worker and every instance of a fleet, survive a
restart, and end everywhere at once on sign-out or revocation. The admin key
and API keys are never stored in the browser.

The sign-in rate limit counts failures per client address in the store too,
so N workers do not allow N times the attempts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from proxy.store import Migration, Store, migrate

COOKIE = "tollway_session"
MAX_TOKEN_LENGTH = 128  # a cookie longer than any id we hand out is not looked up

MIGRATIONS = (
    Migration(1, "sessions and sign-in failures", (
        "create table if not exists dashboard_sessions (digest text primary key, kind text not null, "
        "key_id text, csrf text not null, expires double precision not null, "
        "admin_mark text not null default '', created double precision not null)",
        "create index if not exists dashboard_sessions_expires on dashboard_sessions (expires)",
        "create index if not exists dashboard_sessions_key on dashboard_sessions (key_id)",
        "create table if not exists dashboard_sign_in_failures (client text not null, "
        "at double precision not null)",
        "create index if not exists dashboard_sign_in_failures_client on dashboard_sign_in_failures (client, at)",
    )),
)


async def migrate_sessions(store: Store) -> None:
    await migrate(store, "dashboard", MIGRATIONS)


@dataclass(slots=True, frozen=True)
class Session:
    kind: str  # "admin" or "customer"
    key_id: str | None  # the customer's key
    csrf: str
    expires: float
    admin_mark: str = ""  # which admin key signed in (a change of admin_key ends the session)


def _digest(token: str) -> str:
    # (surrogateescape: a cookie's bytes that are not UTF-8, as aiohttp keeps them; no session has them)
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def admin_mark(admin_key: str) -> str:
    """A fingerprint of the admin key (not the key) to tie sessions to it."""
    return hashlib.sha256(b"tollway-dashboard\0" + admin_key.encode()).hexdigest()[:32]


class Sessions:
    def __init__(self, store: Store, ttl_seconds: float) -> None:
        self.store = store
        self.ttl = ttl_seconds

    async def create(self, kind: str, key_id: str | None = None, mark: str = "") -> tuple[str, Session]:
        """A new session; returns (the id for the cookie, the session). Expired
        sessions are swept here, so the table holds only live ones."""
        now = time.time()
        token = secrets.token_urlsafe(32)
        session = Session(kind, key_id, secrets.token_urlsafe(32), now + self.ttl, mark)
        async with self.store.transaction() as tx:
            await tx.execute("delete from dashboard_sessions where expires <= ?", (now,))
            await tx.execute("insert into dashboard_sessions (digest, kind, key_id, csrf, expires, admin_mark, "
                             "created) values (?, ?, ?, ?, ?, ?, ?)",
                             (_digest(token), kind, key_id, session.csrf, session.expires, mark, now))
        return token, session

    async def get(self, token: str | None) -> Session | None:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        row = await self.store.fetchone("select kind, key_id, csrf, expires, admin_mark from dashboard_sessions "
                                        "where digest = ? and expires > ?", (_digest(token), time.time()))
        return Session(row[0], row[1], row[2], float(row[3]), row[4]) if row else None

    async def end(self, token: str | None) -> None:
        if token and len(token) <= MAX_TOKEN_LENGTH:
            await self.store.execute("delete from dashboard_sessions where digest = ?", (_digest(token),))

    async def count(self) -> int:
        row = await self.store.fetchone("select count(*) from dashboard_sessions where expires > ?", (time.time(),))
        return int(row[0]) if row else 0


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), given.encode("utf-8", "surrogateescape"))


class SignInLimiter:
    """At most ``attempts`` failed sign-ins per client address in ``window``
    seconds; over it, every attempt (even a right key) is refused until the
    oldest failure ages out, so guessing cannot continue at any speed.

    An attempt is counted *before* its key is checked (``attempt``; a right key
    then clears the count): checking first and counting after let a burst of
    guesses sent at once all through, none of them seeing another's failure."""

    def __init__(self, store: Store, attempts: int, window: float) -> None:
        self.store = store
        self.attempts = attempts
        self.window = window

    async def attempt(self, client: str) -> int:
        """Count one attempt of ``client`` as a failure until it succeeds; the seconds it
        must wait first (0: it may go on to the key check). Written, then counted: of any
        number of attempts at once, at most ``attempts`` see a count within the limit."""
        now = time.time()
        async with self.store.transaction() as tx:
            await tx.execute("delete from dashboard_sign_in_failures where at <= ?", (now - self.window,))
            await tx.execute("insert into dashboard_sign_in_failures (client, at) values (?, ?)", (client, now))
        row = await self.store.fetchone("select count(*), min(at) from dashboard_sign_in_failures "
                                        "where client = ? and at > ?", (client, now - self.window))
        if not row or int(row[0]) <= self.attempts:
            return 0
        # Refused without a check: not a guess, so not counted (the wait is the oldest guess's).
        await self.store.execute("delete from dashboard_sign_in_failures where client = ? and at = ?", (client, now))
        return max(1, int(float(row[1]) + self.window - now + 0.999))

    async def succeeded(self, client: str) -> None:
        await self.store.execute("delete from dashboard_sign_in_failures where client = ?", (client,))
