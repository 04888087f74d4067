"""The holds of requests in flight, put back after Redis lost its data (a restart without
persistence, ``FLUSHALL``).

Redis forgets the holds with everything else: the accounts and budget totals it is
seeded with again from PostgreSQL would count none of them, and new requests could be
admitted on money and budget that the requests in flight will still spend. Each
instance knows its own holds (it refreshes them every ``hold_ttl / 3``:
``RedisCounters.live``, budget holds among them), so each puts its own back, before
anything is seeded again:

- Redis's life is a token in ``<prefix>life``. Whatever is about to seed an account or
  a total (an admission, a settle or a grown hold finding its account gone, a total
  gone, a top-up) first calls ``ensure``: one ``GET``, on paths that run once per
  account per Redis life.
- Token gone: this instance sets a new one (``SET NX``: one instance wins), puts its
  own holds back, and announces it on ``<prefix>notices``; ``PUBLISH`` answers how many
  instances listen, and that many must say (``<prefix>restored:<token>``) they put
  theirs back. A token it has not seen: it puts its holds back and says so.
- The seed waits until every instance said so (at most ``ROUND_WAIT_S``; one that did
  not answer by then is stalled, and its holds are put back at its next look): so a
  new request is admitted on a total or a balance that counts every hold in flight.
- Besides, every instance looks every ``hold_ttl / 3`` (paths that create what they
  touch without seeding it).

Putting back is idempotent (``ZADD NX``: a hold or slot still there is not counted twice).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import hiredis

from proxy import ProxyError
from proxy.background import stop_task
from proxy.logs import throttled

from .counters import unavailable

if TYPE_CHECKING:
    from .redis_counters import RedisCounters

log = logging.getLogger("tollway.counters")

ROUND_WAIT_S = 2.0  # how long a seed waits for every instance to put its holds back

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Holds put back into KEYS[2] (members "<hold id>|<amount>" from ARGV[4] on, each to expire ttl
# = ARGV[3] ms from now); ``added``: the amount of those not there already.
_PUT_MEMBERS = """local ttl, added = tonumber(ARGV[3]), 0
for i = 4, #ARGV do
  if redis.call('ZADD', KEYS[2], 'NX', now + ttl, ARGV[i]) == 1 then
    added = added + tonumber(string.match(ARGV[i], '|(%d+)$'))
  end
end
"""

# An account's holds put back. KEYS: account, holds. ARGV: seed balance, seed version (''
# when not read yet: -1 asks for them), ttl ms, members ("<hold id>|<amount>"). Reply: the
# amount put back (members already there are not counted again).
RESTORE_HOLDS = _NOW_MS + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[1] == '' then return -1 end
  redis.call('HSET', KEYS[1], 'bal', ARGV[1], 'res', 0, 'ver', ARGV[2])
end
""" + _PUT_MEMBERS + """if added > 0 then redis.call('HINCRBY', KEYS[1], 'res', added) end
return added
"""

# Concurrency slots put back. KEYS: the scopes' sorted sets. ARGV: ttl ms, then per key the
# number of members and the members.
RESTORE_SLOTS = _NOW_MS + """
local ttl, at = tonumber(ARGV[1]), 2
for i = 1, #KEYS do
  local count = tonumber(ARGV[at]); at = at + 1
  for j = 1, count do
    redis.call('ZADD', KEYS[i], 'NX', now + ttl, ARGV[at]); at = at + 1
  end
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return 1
"""

# Budget holds put back. KEYS: the total's hash, its holds. ARGV: seed ('' when not read yet:
# -1 asks for it), expire-at (unix s), ttl ms, members ("<hold id>|<amount>"). Reply: the amount
# put back (members already there are not counted again).
RESTORE_TOTAL = _NOW_MS + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[1] == '' then return -1 end
  redis.call('HSET', KEYS[1], 'used', ARGV[1], 'held', 0)
  if tonumber(ARGV[2]) > 0 then redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2]))) end
end
""" + _PUT_MEMBERS + """if added > 0 then redis.call('HINCRBY', KEYS[1], 'held', added) end
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[2]) < 0 then
  redis.call('EXPIREAT', KEYS[2], math.ceil(tonumber(ARGV[2])))
end
return added
"""


class Restorer:
    """This instance's side of putting holds back (see the module's doc)."""

    def __init__(self, counters: RedisCounters, seed: Callable[[str], Awaitable[tuple[int, int]]]) -> None:
        self.counters = counters
        self.link = counters.link
        #: ``await seed(account id)``: (stored balance, version) read from the store, no questions asked.
        self.seed = seed
        self.life = counters.prefix + "life"
        self.known: str | None = None  # the Redis life this instance has put its holds back in
        self.complete: str | None = None  # the Redis life every instance has put its holds back in
        self.rounds = 0  # holds put back (tests, logs)
        self._warned: str | None = None
        self._lock = asyncio.Lock()
        self._busy: asyncio.Task | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        token = await self._token()
        if token is None:  # a fresh Redis (or prefix): this start opens its life; an instance
            token = await self._lead()  # holding anything puts it back at the notice, at once
        self.known = self.complete = token
        self.counters.on("restore", lambda: self.ensure(wait=False))
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="tollway-redis-restore")

    async def stop(self) -> None:
        # (stop_task: a cancel lost in redis-py's asyncio.wait_for must not leave the loop running)
        await asyncio.gather(stop_task(self._task), return_exceptions=True)
        self._task = None

    async def _token(self) -> str | None:
        """The token, read on the scripts' pipelined connection when it is open: every seed
        reads it first, and a burst of first requests (a new account's, or every account's
        after Redis lost its data) shares that one connection. Through redis-py's pool each
        read took a connection of its own, over TLS a handshake each, and on a loaded machine
        the handshakes outlasted the timeout: the burst was answered 503."""
        link = self.link
        pipe = link.pipe
        if pipe is None or pipe.closed or link.down:
            raw = await link.call(lambda: link.redis.get(self.life))
        else:
            try:
                raw = await pipe.send(hiredis.pack_command(("GET", self.life)))
            except (OSError, TimeoutError) as exc:
                link.failed(exc)
                raise unavailable() from None
            if isinstance(raw, hiredis.ReplyError):
                from redis.exceptions import ResponseError

                raise ResponseError(str(raw))
        return None if raw is None else raw.decode()

    async def token(self) -> str | None:
        """Redis's life token as it is now (None: Redis lost its data and no instance has
        noticed yet); the ledger writer compares it across its steps (``writer_stream.py``)."""
        return await self._token()

    async def ensure(self, wait: bool = True) -> None:
        """Before seeding: if Redis lost its data since this instance last looked, put this
        instance's holds back (and, ``wait``, until every instance has put its own back)."""
        if asyncio.current_task() is self._busy:
            return  # putting back needs a seed itself: this is that seed
        if self.known is not None and self.known == self.complete and await self._token() == self.known:
            return  # the usual case: the same Redis life, every hold in it (no lock: seeds run side by side)
        async with self._lock:
            self._busy = asyncio.current_task()
            try:
                token = await self._token()
                if token is None:
                    token = await self._lead()
                elif token != self.known:
                    await self._restore(token)
                self.known = token
            finally:
                self._busy = None
        if wait and token != self.complete:
            await self._all_back(token)
            self.complete = token

    async def _lead(self) -> str:
        """The token is gone: start a new Redis life (unless another instance just did)."""
        link, redis = self.link, self.link.redis
        new = secrets.token_hex(8)
        if not await link.call(lambda: redis.set(self.life, new, nx=True)):
            token = await self._token() or new  # another instance leads this round: join it
            await self._restore(token)
            return token
        await self._restore(new)
        listening = await link.call(lambda: redis.publish(self.counters.prefix + "notices",
                                                          f"{self.counters.instance} restore"))
        await link.call(lambda: redis.set(self._need(new), max(int(listening), 1), ex=600))
        if self.known is not None:  # (None: this instance never saw a life before: a fresh Redis or prefix)
            log.warning("storage.counters: Redis lost its data (a restart without persistence, or FLUSHALL): "
                        "the requests in flight put their holds back (%d instance(s) asked) before anything is seeded "
                        "again from the store", listening)
        return new

    def _need(self, token: str) -> str:
        return f"{self.counters.prefix}restored:{token}:need"

    async def _restore(self, token: str) -> None:
        """Put this instance's holds back, then say so."""
        counters, link = self.counters, self.link
        if counters.leases is not None:
            counters.leases.lost()  # (what was leased and unused is not put back: free in the new life)
        ttl = counters.ttl_ms
        holds, total_holds = counters.prefix + "holds:", counters.prefix + "total-holds:"
        slot_keys: list[str] = []
        slot_args: list = [ttl]
        for zkey, members in list(counters.live.items()):
            if not members or zkey.startswith(total_holds):  # (budget holds: below)
                continue
            if not zkey.startswith(holds):
                slot_keys.append(zkey)
                slot_args += [len(members), *members]
                continue
            account_id = zkey[len(holds):]
            keys = [counters.prefix + "acct:" + account_id, zkey]
            args: list = ["", "", ttl, *members]
            if await link.run(RESTORE_HOLDS, keys, args) == -1:
                args[0:2] = await self.seed(account_id)
                await link.run(RESTORE_HOLDS, keys, args)
        if slot_keys:
            await link.run(RESTORE_SLOTS, slot_keys, slot_args)
        for name, (until, fresh) in list(counters.total_meta.items()):
            keys = counters.total_keys(name)[:2]
            members = counters.live.get(keys[1])
            if not members:
                continue
            args = ["", repr(until), ttl, *members]
            if await link.run(RESTORE_TOTAL, keys, args) == -1:
                args[0] = await fresh() if fresh is not None else 0
                await link.run(RESTORE_TOTAL, keys, args)
        done = f"{counters.prefix}restored:{token}"
        pipe = link.redis.pipeline(transaction=False)
        pipe.sadd(done, counters.instance)
        pipe.expire(done, 600)
        await link.call(pipe.execute)
        self.rounds += 1

    async def _all_back(self, token: str) -> None:
        """Wait until every instance that listened has put its holds back (at most ROUND_WAIT_S)."""
        redis = self.link.redis
        done = f"{self.counters.prefix}restored:{token}"
        deadline = time.monotonic() + ROUND_WAIT_S
        while True:
            pipe = redis.pipeline(transaction=False)
            pipe.get(self._need(token))
            pipe.scard(done)
            need, said = await self.link.call(pipe.execute)
            if need is not None and said >= int(need):
                return
            if time.monotonic() > deadline:
                if self._warned == token:
                    return
                self._warned = token  # one line per round, not one per request that waited
                log.warning("storage.counters: after Redis lost its data, %s of %s instance(s) said they put their "
                            "holds back within %gs; the others' come back at their next look (every hold_ttl/3)",
                            said, need.decode() if need is not None else "?", ROUND_WAIT_S)
                return
            await asyncio.sleep(0.01)

    async def _watch(self) -> None:
        """Every hold_ttl / 3: has Redis lost its data without anything being seeded since?"""
        while True:
            await asyncio.sleep(self.counters.ttl_ms / 3000)
            if self.link.down:
                continue
            try:
                await self.ensure(wait=False)
            except ProxyError:
                continue  # the counters went down meanwhile: the next look, once they are back
            except Exception:
                throttled(log, logging.ERROR, "restore_failed", "storage.counters: putting holds back failed",
                          exc_info=True)
