"""The connection to the shared counters' Redis, and whether it is up.

``RedisLink`` is one redis-py client (a bounded pool) plus the pipelined connection the
scripts go over (``redis_pipe.py``), and the counters' outage state: every call has a
timeout; a call that fails marks the link ``down`` (a timeout only once Redis is silent
on the scripts' connection too: ``RedisLink.call``); while down nothing is sent and a
probe PINGs every ``PROBE_S``; the first answer reconnects and brings it back, then runs
``on_up``. ``RedisCounters`` (``redis_counters.py``) is what plugins use on top of it.

URL options (query string, removed before connecting): see ``parse_counters_url``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import hiredis

from proxy.background import stop_task
from proxy.logs import throttled

from .counters import unavailable
from .redis_pipe import RedisPipe

log = logging.getLogger("tollway.counters")

HOLD_TTL_S = 30.0  # a dead instance's holds and slots come back within this
PROBE_S = 0.25
POOL_SIZE = 64
PING = hiredis.pack_command(("PING",))


def parse_counters_url(url: str) -> tuple[str, str, float, float]:
    """(the URL redis-py connects to, key prefix, timeout seconds, hold TTL seconds); ``leases=``
    is read by ``leases_of``."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    leases_of(url)
    query.pop("leases", None)
    prefix = query.pop("prefix", "tollway:")
    try:
        timeout = float(query.pop("timeout", "2.0"))
    except ValueError:
        raise ValueError("storage.counters: timeout= must be a number of seconds") from None
    try:
        hold_ttl = float(query.pop("hold_ttl", str(HOLD_TTL_S)))
    except ValueError:
        raise ValueError("storage.counters: hold_ttl= must be a number of seconds") from None
    if timeout <= 0 or not 1 <= hold_ttl <= 600:
        raise ValueError("storage.counters: timeout= must be above 0 and hold_ttl= between 1 and 600 seconds")
    return urlunsplit(parts._replace(query=urlencode(query))), prefix, timeout, hold_ttl


def leases_of(url: str) -> bool:
    """``leases=on`` (the default) or ``off`` in the counters URL: whether requests are admitted
    from this instance's leases when they cover them (``redis_leases.py``), or every admission
    is one exact ``ADMIT``."""
    value = dict(parse_qsl(urlsplit(url).query)).get("leases", "on")
    if value not in ("on", "off"):
        raise ValueError(f"storage.counters: leases= must be on or off, not {value!r}")
    return value == "on"


class RedisLink:
    """One Redis client with a down flag: a failed call marks it down, a probe brings it back."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry  # (the asyncio one: redis-py 8 warns at a sync Retry)
        from redis.backoff import NoBackoff

        conn_url, self.prefix, self.timeout, self.hold_ttl = parse_counters_url(url)
        self.leases = leases_of(url)
        # A bounded pool: a burst waits (at most the timeout) for a connection instead of
        # opening hundreds; scripts take microseconds, so a few dozen connections carry it.
        pool = BlockingConnectionPool.from_url(conn_url, max_connections=POOL_SIZE, timeout=self.timeout,
                                               socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                                               retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.redis = Redis(connection_pool=pool)
        self.conn_url = conn_url
        self.pipe: RedisPipe | None = None  # the scripts' pipelined connection (see redis_pipe.py)
        self.other_pipes: list[RedisPipe] = []  # more of them (the ledger writer's), closed with the link
        self.before_write: Callable[[], None] | None = None  # each pipe's (RedisPipe.before_write)
        self._shas: dict[str, str] = {}
        self.down = False
        self.closed = False  # closed: a call that fails now starts no probe (a stopped process reconnected)
        self._probe: asyncio.Task | None = None
        self._scripts: dict[str, Any] = {}
        self.on_up: list[Callable[[], object]] = []
        # What the outage log lines add (storage.on_counters_down: local says what it does instead).
        self.down_note: Callable[[], str] = lambda: ("money and limits are refused (503 counters_unavailable) "
                                                     "until it answers again")
        self.up_note = ""

    def script(self, source: str) -> Any:
        s = self._scripts.get(source)
        if s is None:
            s = self._scripts[source] = self.redis.register_script(source)
        return s

    async def connect_pipe(self) -> None:
        """Open the scripts' pipelined connection."""
        if self.pipe is not None:
            self.pipe.close()
        self.pipe = await self.open_pipe()
        self.pipe.before_write = self.before_write

    async def open_pipe(self) -> RedisPipe:
        """A pipelined connection (``redis_pipe.py``); over TLS (``rediss://``) with the TLS
        settings redis-py takes from the same URL (``ssl_ca_certs``, ``ssl_cert_reqs``...)."""
        from redis.asyncio.connection import SSLConnection, parse_url

        options = parse_url(self.conn_url)
        tls = None
        if options.pop("connection_class", None) is SSLConnection:
            tls = SSLConnection(**options).ssl_context.get()  # (made as redis-py's own connections make it)
        return await RedisPipe.connect(options, self.timeout, tls)

    async def other_pipe(self, pipe: RedisPipe | None) -> RedisPipe:
        """``pipe``, or a new pipelined connection when it is None or closed (Redis went away
        meanwhile), closed with the link; failures as ``run``'s."""
        if pipe is not None and not pipe.closed:
            return pipe
        if self.down or self.closed:
            raise unavailable()
        try:
            pipe = await self.open_pipe()
        except (OSError, TimeoutError) as exc:
            self.failed(exc)
            raise unavailable() from None
        if self.closed:  # (closed while it connected)
            pipe.close()
            raise unavailable()
        self.other_pipes = [p for p in self.other_pipes if not p.closed] + [pipe]
        return pipe

    def _sha(self, source: str) -> str:
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        return sha

    async def run(self, source: str, keys: list[str], args: list, pipe: RedisPipe | None = None) -> Any:
        """Run a script (on ``pipe``, else the scripts' connection); when Redis cannot be
        reached, mark the link down and raise ``counters_unavailable`` (an error Redis
        answered is raised as it is)."""
        pipe = pipe or self.pipe
        if pipe is None or self.down:
            return await self.call(lambda: self.script(source)(keys=keys, args=args))
        packed = hiredis.pack_command(("EVALSHA", self._sha(source), len(keys), *keys, *args))
        for _ in range(2):
            try:
                reply = await pipe.send(packed)
                if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                    # Redis restarted or flushed its scripts: loaded on this same connection. (Through
                    # redis-py's pool, a burst of first requests opened a connection each, and over
                    # TLS their handshakes outlasted the timeout on a busy machine: 503s.)
                    reply = await pipe.send(hiredis.pack_command(("SCRIPT", "LOAD", source)))
                    if not isinstance(reply, hiredis.ReplyError):
                        continue
            except (OSError, TimeoutError) as exc:
                self.failed(exc)
                raise unavailable() from None
            if not isinstance(reply, hiredis.ReplyError):
                return reply
            from redis.exceptions import ResponseError

            raise ResponseError(str(reply))
        raise unavailable()

    async def command(self, pipe: RedisPipe, *args: Any) -> Any:
        """One command on ``pipe`` (its reply as hiredis parses it: lists and bytes, no
        redis-py reply callbacks); failures as ``run``'s."""
        if self.down:
            raise unavailable()
        try:
            reply = await pipe.send(hiredis.pack_command(args))
        except (OSError, TimeoutError) as exc:
            self.failed(exc)
            raise unavailable() from None
        if isinstance(reply, hiredis.ReplyError):
            from redis.exceptions import ResponseError

            raise ResponseError(str(reply))
        return reply

    def send(self, source: str, keys: list[str], args: list) -> asyncio.Future | None:
        """A script sent without a task (written with the rest of this turn's commands): its
        reply (a ``hiredis.ReplyError`` for an error Redis answered, e.g. NOSCRIPT) is the
        future's, for a callback to read. None when it cannot be sent (no pipe, Redis
        down): ``run`` it instead."""
        pipe = self.pipe
        if pipe is None or self.down or pipe.closed:
            return None
        return pipe.send(hiredis.pack_command(("EVALSHA", self._sha(source), len(keys), *keys, *args)))

    def written(self) -> asyncio.Future | None:
        """See ``RedisPipe.written`` (None: nothing waits to be written)."""
        return self.pipe.written() if self.pipe is not None else None

    async def call(self, command: Callable[[], Awaitable]) -> Any:
        """``await command()`` unless Redis is down (then nothing is sent). A timeout marks
        the link down only if Redis does not answer on the scripts' connection either
        (``answers``): redis-py's timeout is a timer, and after this process was not
        scheduled for longer than it (a loaded machine) the timer fires before the reply
        that came meanwhile is read. (It marked the counters down: 503s for every request
        until the probe's reconnect, though Redis had answered.)"""
        if self.down:
            raise unavailable()
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeout

        try:
            return await command()
        except (asyncio.CancelledError, ResponseError):
            raise
        except Exception as exc:
            if not isinstance(exc, (TimeoutError, RedisTimeout)) or not await self.answers():
                self.failed(exc)
            else:
                throttled(log, logging.WARNING, "redis_stalled", "storage.counters: a call to Redis timed out "
                          "(%s), yet Redis answers: this process was not scheduled for a while (a loaded "
                          "machine?); that call failed, the counters stay up", exc)
            raise unavailable() from None

    async def answers(self) -> bool:
        """Whether Redis answers a PING on the scripts' connection, whose watchdog counts only
        Redis's own silence (``redis_pipe.py``): how a timeout is told from this process's stall."""
        pipe = self.pipe
        if pipe is None or pipe.closed or self.down:
            return False
        try:
            return await pipe.send(PING) == b"PONG"
        except (OSError, TimeoutError):
            return False

    def failed(self, exc: BaseException) -> None:
        if "No connection available" in str(exc):  # every pooled connection busy for the timeout: load
            throttled(log, logging.WARNING, "redis_pool", "storage.counters: all %d Redis connections were busy "
                      "for %.1fs; requests were refused (503)", POOL_SIZE, self.timeout)
            return
        if not self.down and not self.closed:
            self.down = True
            log.error("storage.counters: Redis cannot be reached (%s: %s); %s", type(exc).__name__, exc,
                      self.down_note())
            self._probe = asyncio.get_running_loop().create_task(self._wait_up(), name="tollway-redis-probe")

    async def _wait_up(self) -> None:
        while True:
            await asyncio.sleep(PROBE_S)
            try:
                # The pool's connections were to the server that went away: each would fail
                # once more (and mark the link down again) if it were reused after the probe.
                await self.redis.connection_pool.disconnect()
                await self.redis.ping()
                await self.connect_pipe()
            except Exception:
                continue
            self.down = False
            log.warning("storage.counters: Redis answers again%s", f"; {self.up_note}" if self.up_note else "")
            for callback in self.on_up:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            return

    async def close(self) -> None:
        self.closed = True
        await asyncio.gather(stop_task(self._probe), return_exceptions=True)  # (before the pipe: it opens one)
        for pipe in [self.pipe, *self.other_pipes]:
            if pipe is not None:
                pipe.close()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()
