"""``storage.counters: redis://host:port/db``: the counters shared by every worker and instance.

Each check-and-change is one Lua script (``redis_scripts.py``), one round trip,
atomic across the fleet: a GCRA ``take`` over all of a request's rules, a
concurrency slot, a capped total. What gives back (``adjust``, ``leave``,
``release_totals``, ``settle_totals``) returns at once and is sent behind.

Slots, the holds of capped totals (budgets) and the credit holds of
``redis_credit.py`` are members of sorted sets scored by their expiry on Redis's
clock: this instance refreshes its own every ``ttl / 3``, so the slots and holds
of an instance that died (kill -9) expire within ``hold_ttl`` (``redis_link.HOLD_TTL_S``) and what they
held comes back.

Failures: every call has a timeout and none is retried; a call that fails marks the
counters ``down`` and callers answer 503 ``counters_unavailable`` at once until a probe
brings Redis back (the connection and its outage state: ``redis_link.py``). Nothing falls
back to per-process limits unless ``storage.on_counters_down: local`` says so
(``redis_local.py``: unmetered keys only).

URL options (query string, removed before connecting): ``prefix`` (default
``tollway:``; one Redis may serve several fleets or tests), ``timeout``
(seconds, default 2), ``hold_ttl`` (seconds a hold or slot outlives its
instance, default 30): ``redis_link.parse_counters_url``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import hiredis

from proxy import ProxyError
from proxy.background import stop_task
from proxy.logs import throttled

from . import redis_owed_totals as owed_totals
from . import redis_scripts as lua
from .claims import LOCAL_HOLD, Admission, RateClaim, SlotClaim, TotalClaim
from .counters import Counters, Refusal
from .gcra import Rule, Tat
from .redis_admit import admit_in_redis
from .redis_leases import Leases
from .redis_link import PROBE_S, RedisLink

if TYPE_CHECKING:
    from proxy import Gateway

log = logging.getLogger("tollway.counters")


async def _no_seed(account_id: str) -> tuple[int, int]:
    return 0, 0


class RedisCounters(Counters):
    kind = "redis"

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.prefix = link.prefix
        self.instance = secrets.token_hex(6)
        self._ids = itertools.count()
        self.tats: dict[tuple, Tat] = {}  # what this instance last saw (for the headers)
        self.slots: dict[str, list[str]] = {}  # scope -> this instance's slot ids in it
        self.totals: dict[str, int] = {}  # name -> used, as last seen
        self.live: dict[str, set[str]] = {}  # sorted-set key -> members this instance keeps alive
        self._behind: set[asyncio.Future] = set()
        self._adjusts: list[tuple[str, float]] = []  # (TAT key, seconds) to send at the end of this turn
        link.before_write = self._send_adjusts  # (with the turn's write, when there is one)
        if link.pipe is not None:
            link.pipe.before_write = self._send_adjusts
        self._listeners: dict[str, list[Callable[[], object]]] = {}
        self._tasks: list[asyncio.Task] = []
        self.ttl_ms = int(link.hold_ttl * 1000)
        #: ``await lost()``: Redis lost its data; put this instance's holds back (redis_restore.py).
        self.lost: Callable[[], Awaitable[None]] | None = None
        #: ``await seed_account(account id)``: (stored balance, store version), read fresh from the
        #: store, for an account Redis does not have yet (set by the accounts book).
        self.seed_account: Callable[[str], Awaitable[tuple[int, int]]] = _no_seed
        #: ``life()``: the Redis life this instance's holds are in (``Restorer.known``).
        self.life: Callable[[], str | None] = lambda: None
        self.pending_totals: list[owed_totals.OwedTotal] = []  # budget settles Redis missed
        self.encoded: dict[int, tuple] = {}  # id(rules) -> (rules, TAT keys, ADMIT arguments): redis_admit
        self._account_keys: dict[str, list[str]] = {}
        self._total_keys: dict[str, list[str]] = {}
        #: name -> (expire-at, ``await fresh()``) of each total this instance holds some of (``live``).
        self.total_meta: dict[str, tuple[float, Callable[[], Awaitable[int]] | None]] = {}
        #: Slices of credit and rate limits taken ahead (``redis_leases.py``; None: ``leases=off``).
        self.leases: Leases | None = Leases(self) if link.leases else None

    @property
    def down(self) -> bool:  # type: ignore[override]
        return self.link.down

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def account_keys(self, account_id: str) -> list[str]:
        """[its hash, its holds' sorted set] of an account (made once per account)."""
        keys = self._account_keys.get(account_id)
        if keys is None:
            if len(self._account_keys) >= 65536:
                self._account_keys.clear()
            keys = self._account_keys[account_id] = [self.prefix + "acct:" + account_id,
                                                     self.prefix + "holds:" + account_id]
        return keys

    def new_id(self) -> str:
        return f"{self.instance}.{next(self._ids):x}"

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._keep_alive(), name="tollway-redis-keepalive"))
        self._tasks.append(loop.create_task(self._listen(), name="tollway-redis-notices"))
        if self.leases is not None:
            self.leases.start()

    # -- rate limits ----------------------------------------------------------------------------
    def tat_key(self, state: tuple) -> str:
        # rl2: the state is "<at> <debt>" (redis_scripts.py); an older instance's "rl:" keys
        # held an absolute TAT and are never read as such.
        return self.prefix + "rl2:" + "\x1f".join(state)

    async def admit(self, admission: Admission) -> None:
        """From this instance's leases when they cover every claim (no round trip), else every
        claim in ONE script (``ADMIT``): one round trip for the whole admission."""
        leases = self.leases
        if leases is None:
            await admit_in_redis(self, admission)
            return
        if leases.admit(admission):
            return
        if await leases.wait(admission) and leases.admit(admission):
            return
        leases.give_back_for(admission)
        await admit_in_redis(self, admission)
        leases.after_exact(admission)

    def admit_now(self, admission: Admission) -> bool:
        """From this instance's leases when they cover every claim: admitted with no await."""
        return self.leases is not None and self.leases.admit(admission)

    async def take(self, rules: tuple[Rule, ...], tokens: int, now: float) -> Refusal | None:
        """(Exact, never from leases: one rule set taken on its own, outside a request.)"""
        admission = Admission()
        claim = admission.add(RateClaim(rules, tokens, now))
        await admit_in_redis(self, admission)
        return claim.refusal

    def tat(self, state: tuple) -> Tat | None:
        if self.leases is not None:
            return self.leases.view(state, self.tats.get(state))
        return self.tats.get(state)

    def adjust(self, rules: tuple[Rule, ...], tokens: int) -> None:
        """Corrections are gathered for one event-loop turn and sent as ONE ``ADJUST`` (under
        load, many requests settle in the same turn: one script for all of them), in the
        turn's write when there is one (a metered request's ``SETTLE``: ratelimit's settle
        runs before the answer's end with it), so no write and no reply of its own."""
        tats = self.tats
        pending = self._adjusts
        if not pending:
            asyncio.get_running_loop().call_soon(self._send_adjusts)
        for rule in rules:
            shift = tokens * rule.interval
            tat = tats.get(rule.state)
            if tat is not None:
                tats[rule.state] = (tat[0], tat[1] + shift)
            pending.append((self.tat_key(rule.state), shift))

    def _send_adjusts(self) -> None:
        pending, self._adjusts = self._adjusts, []
        if pending:
            self.send_behind(lua.ADJUST, [key for key, _ in pending], [repr(shift) for _, shift in pending])

    # -- concurrency ----------------------------------------------------------------------------
    async def enter(self, scope: str, limit: int) -> bool:
        admission = Admission()
        admission.add(SlotClaim(scope, limit))
        await self.admit(admission)
        return admission.refused is None

    def leave(self, scope: str) -> None:
        mine = self.slots.get(scope)
        if not mine:
            return
        slot = mine.pop()
        if not mine:
            del self.slots[scope]
        zkey = self.key("cc", scope)
        self.forget_live(zkey, slot)
        self.behind(self.link.call(lambda: self.link.redis.zrem(zkey, slot)))

    # -- capped totals --------------------------------------------------------------------------
    def total_keys(self, name: str) -> list[str]:
        """[its hash, its holds, its expired holds] of a total (``redis_scripts._FREE_EXPIRED_TOTAL``)."""
        keys = self._total_keys.get(name)
        if keys is None:
            if len(self._total_keys) >= 65536:
                self._total_keys.clear()
            keys = self._total_keys[name] = [self.prefix + "total:" + name, self.prefix + "total-holds:" + name,
                                             self.prefix + "total-gone:" + name]
        return keys

    def keep_total_hold(self, claim: TotalClaim, member: str) -> None:
        """A hold this admission took of ``claim``'s total: kept alive until its settle has run
        (and put back if Redis loses its data: ``redis_restore.py``, with ``total_meta``)."""
        self.live.setdefault(self.total_keys(claim.name)[1], set()).add(member)
        self.total_meta[claim.name] = (claim.until, claim.fresh)

    def forget_total_holds(self, names: Sequence[str], holds: Sequence[str]) -> None:
        for name in names:
            zkey = self.total_keys(name)[1]
            for member in holds:
                self.forget_live(zkey, member)
            if zkey not in self.live:
                self.total_meta.pop(name, None)

    async def hold_total(self, name: str, cap: int, amount: int, *, seed: int = 0, until: float = 0.0,
                         fresh: Callable[[], Awaitable[int]] | None = None) -> str | None:
        admission = Admission()
        claim = admission.add(TotalClaim(name, cap, amount, seed, until, fresh=fresh))
        await self.admit(admission)
        return None if admission.refused is not None else claim.hold or LOCAL_HOLD

    def settle_totals(self, names: Sequence[str], held: int, spent: int, holds: Sequence[str] = ()) -> None:
        totals = self.totals
        for name in names:
            totals[name] = totals.get(name, 0) + spent
        self.behind(self._settle_totals(tuple(names), spent, tuple(h for h in holds if h != LOCAL_HOLD)))

    async def _settle_totals(self, names: tuple[str, ...], spent: int, holds: tuple[str, ...]) -> None:
        try:
            used = await self.run_settle_totals(names, spent, holds)
            missing = tuple(name for name, value in zip(names, used, strict=True) if value == -1)
            if missing and spent and self.lost is not None:
                # Redis lost the totals (its data) since the hold: with the holds in flight put back
                # (this one among them: it is kept alive until its settle has run), count the spend.
                await self.lost()
                used = [value for value in used if value != -1] + await self.run_settle_totals(missing, spent, holds)
                names = tuple(name for name in names if name not in missing) + missing
        except ProxyError as exc:
            if exc.code != "counters_unavailable":
                raise
            owed_totals.missed(self, names, spent, holds)  # sent when Redis answers (redis_owed_totals.py)
            return
        self.forget_total_holds(names, holds)
        for name, value in zip(names, used, strict=True):
            if value >= 0:
                self.totals[name] = int(value)

    def totals_sent(self, names: Sequence[str], spent: int) -> None:
        """Budgets settled in a request's ``SETTLE`` (``redis_credit.Totals``), sent: counted here
        at once, as ``settle_totals`` counts them."""
        totals = self.totals
        for name in names:
            totals[name] = totals.get(name, 0) + spent

    def totals_settled(self, names: Sequence[str], spent: int, holds: Sequence[str], used: Sequence[int]) -> None:
        """What that ``SETTLE`` answered for them (per name its used after, or -1: a total Redis
        lost with its data; that one settles as ``settle_totals`` would, sent behind)."""
        missing = tuple(name for name, value in zip(names, used, strict=True) if value == -1)
        if missing:
            self.behind(self._settle_totals(missing, spent, tuple(holds)))
        found = [name for name in names if name not in missing]
        self.forget_total_holds(found, holds)
        for name, value in zip(names, used, strict=True):
            if value >= 0:
                self.totals[name] = int(value)

    async def run_settle_totals(self, names: Sequence[str], spent: int, holds: Sequence[str]) -> list[int]:
        """``SETTLE_TOTALS`` (``redis_scripts.py``): per name its used after, or -1."""
        keys: list[str] = []
        for name in names:
            keys += self.total_keys(name)
        return [int(value) for value in await self.link.run(lua.SETTLE_TOTALS, keys, [spent, *holds])]

    def used_total(self, name: str) -> int:
        return self.totals.get(name, 0)

    async def read_totals(self, names: Sequence[str]) -> None:
        if not names:
            return
        used = await self.link.run(lua.READ_TOTALS, [self.key("total", name) for name in names], [])
        totals = self.totals
        for name, value in zip(names, used, strict=True):
            # Never lower: a total only grows, and this process's own settle may still be on its
            # way to Redis. (-1: Redis does not have it; this period's spend is the store's, the seed.)
            if value > totals.get(name, 0):
                totals[name] = int(value)

    # -- what is sent behind, and kept alive ----------------------------------------------------
    def send_behind(self, source: str, keys: list[str], args: list) -> None:
        """A script whose reply nobody needs, sent without a task (a task per script is a
        good part of a request's CPU); one Redis could not run as sent (NOSCRIPT) runs
        again the awaited way, which loads it."""
        sent = self.link.send(source, keys, args)
        if sent is None:
            self.behind(self.link.run(source, keys, args))
            return
        self._behind.add(sent)
        sent.add_done_callback(lambda done: self._sent_behind(done, source, keys, args))

    def _sent_behind(self, done: asyncio.Future, source: str, keys: list[str], args: list) -> None:
        self._behind.discard(done)
        if done.cancelled() or done.exception() is not None:
            return  # the connection failed (the next call marks the link down); what it held expires
        if isinstance(done.result(), hiredis.ReplyError):
            self.behind(self.link.run(source, keys, args))

    def behind(self, work: Awaitable) -> None:
        task = asyncio.ensure_future(work)
        self._behind.add(task)
        task.add_done_callback(self._done_behind)

    def _done_behind(self, task: asyncio.Task) -> None:
        self._behind.discard(task)
        if not task.cancelled() and task.exception() is not None:
            pass  # the link logged the outage; what it held expires with its TTL

    async def settled(self) -> None:
        self._send_adjusts()
        while self._behind:
            await asyncio.gather(*list(self._behind), return_exceptions=True)

    def forget_live(self, zkey: str, member: str) -> None:
        members = self.live.get(zkey)
        if members is not None:
            members.discard(member)
            if not members:
                del self.live[zkey]

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            if self.link.down or not self.live:
                continue
            keys, args = [], [self.ttl_ms]
            for zkey, members in list(self.live.items()):
                keys.append(zkey)
                args += [len(members), *members]
            try:
                await self.link.run(lua.REFRESH, keys, args)
            except Exception:
                continue

    async def healthy(self) -> bool:
        """For /health/ready: Redis answers (never waits longer than the timeout)."""
        if self.link.down:
            return False
        try:
            await self.link.call(lambda: self.link.redis.ping())
        except Exception:
            return False
        return True

    # -- change notices -------------------------------------------------------------------------
    def instances(self) -> int:
        return 1

    def notify(self, topic: str) -> None:
        message = f"{self.instance} {topic}"
        self.behind(self.link.call(lambda: self.link.redis.publish(self.prefix + "notices", message)))

    def on(self, topic: str, callback: Callable[[], object]) -> None:
        self._listeners.setdefault(topic, []).append(callback)

    async def _listen(self) -> None:
        channel = self.prefix + "notices"
        while True:
            pubsub = self.link.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None:
                        continue
                    sender, _, topic = msg["data"].decode().partition(" ")
                    if sender != self.instance:
                        await self._fire(topic)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(PROBE_S)
                # Notices may have been missed while away: every listener looks again.
                for topic in list(self._listeners):
                    await self._fire(topic)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def _fire(self, topic: str) -> None:
        for callback in self._listeners.get(topic, ()):
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except ProxyError as exc:  # Redis down: already told, once, by the link ("cannot be reached")
                if exc.code != "counters_unavailable":
                    throttled(log, logging.ERROR, "notice_failed", "a change notice (%s) failed: %s", topic, exc)
            except Exception:
                throttled(log, logging.ERROR, "notice_failed", "a change notice (%s) failed", topic, exc_info=True)

    async def close(self) -> None:
        # stop_task, not one cancel: redis-py's writes use asyncio.wait_for, which on Python 3.11
        # loses a cancel that comes as the write ends; the notices' loop then went on for ever
        # and the stop never ended (as the listener subscribes again once Redis is back).
        await asyncio.gather(*(stop_task(task) for task in self._tasks), return_exceptions=True)
        if self.leases is not None:
            await self.leases.close()
        await self.settled()
        await self.link.close()


async def open_redis_counters(gateway: Gateway) -> RedisCounters:
    link = RedisLink(gateway.config.storage.counters)
    if gateway.config.storage.on_counters_down == "local":
        from .redis_local import LocalWhenDownCounters

        counters: RedisCounters = LocalWhenDownCounters(link)
    else:
        counters = RedisCounters(link)
    try:
        async with asyncio.timeout(link.timeout * 4):
            await link.redis.ping()
        await link.connect_pipe()
    except Exception as exc:
        await link.close()
        from proxy.schema import StartRefused

        where = urlsplit(gateway.config.storage.counters)
        raise StartRefused(f"storage.counters: cannot reach Redis at {where.hostname}:{where.port or 6379} "
                           f"({type(exc).__name__}: {exc}); start Redis or fix the URL") from None
    counters.start()
    gateway.dependencies["counters"] = counters.healthy
    return counters
