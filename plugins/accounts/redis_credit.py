"""Credit shared by a fleet: balances and holds in Redis, the ledger queue in a Redis stream.

With ``storage.counters: redis://...`` every instance reserves and charges a
metered account through Redis, one Lua script each (``redis_scripts.py``):

- ``reserve`` (a credit claim of the request's admission, ``claims.py``, in
  the one ``ADMIT`` script with its other claims): drop the account's expired
  holds, then hold ``amount`` if ``bal - res >= amount``; else refuse (402). So the fleet's holds never
  exceed the balance: it can never go below zero.
- ``settle``: free the hold, charge ``min(cost, bal - res)`` and append the
  request's ledger row (with that charge) to the stream ``<prefix>ledger``, in
  the same script. The row is in Redis the moment the charge is, so a crash
  of this process afterwards loses neither (any instance's writer stores it).
- ``release``: free a hold that was not charged (sent behind).

A hold lives ``HOLD_TTL_S`` unless its instance refreshes it (every third of
that): the holds of an instance killed with -9 expire and the money comes back.

The balance in Redis (``bal``) is what the fleet may still spend: the stored
balance minus the charges queued in the stream and not yet written. An
account enters Redis with its stored balance and the store version that
balance was read at (``ver``); a top-up made at version ``v`` is added once,
only if ``v > ver`` (the seed did not include it). Redis must keep its keys
(no ``maxmemory`` eviction policy other than ``noeviction``).

The writers (one per instance, ``writer.py``) read the stream as one consumer
group: each entry is written to the store once (rows already there are
skipped, so an entry written by an instance that died before acknowledging it
is not written twice), with its charge as the balance change, in the same
transaction as the row. Entries another instance took and never acknowledged
for ``hold_ttl`` (the time after which an instance that stopped refreshing its holds
counts as dead) are claimed by the next writer that looks (each looks every
``hold_ttl``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, NamedTuple

import orjson

from proxy.logs import throttled

from . import redis_scripts as lua
from .claims import Admission, CreditClaim
from .db import LedgerRow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .model import Account
    from .redis_counters import RedisCounters
    from .redis_pipe import RedisPipe

log = logging.getLogger("tollway.accounts")

GROUP = "writers"
COST = LedgerRow._fields.index("cost_micro_usd")


class Settled(NamedTuple):
    charge: int
    balance: int
    reserved: int


class Totals(NamedTuple):
    """A request's budgets settled with its charge (``SETTLE``): the totals' names, and the
    members of its holds (``LOCAL_HOLD`` left out)."""

    names: tuple[str, ...]
    holds: tuple[str, ...]


class StreamEntry(NamedTuple):
    entry_id: bytes
    row: LedgerRow | None  # with the charge as its cost (what the store keeps)
    account_id: str
    charge: int
    done: str | None = None  # its SETTLE's done marker, the key (entries of older instances: None)


class SharedCredit:
    back_s = 3.0  # how long a stop with charges Redis did not get waits for it (within stopping.CLOSE_S)

    def __init__(self, counters: RedisCounters, seed: Callable[[str], Awaitable[tuple[int, int]]]) -> None:
        #: ``await seed(account id)``: (stored balance, store version) read fresh from the store.
        self.seed = seed
        self.counters = counters
        counters.seed_account = seed
        self.link = counters.link
        self.prefix = counters.prefix
        self.stream = self.prefix + "ledger"
        self._group_ready = False
        self._pipe: RedisPipe | None = None  # the writer's own pipelined connection (see _take)

    def _keys(self, account_id: str) -> list[str]:
        return list(self.counters.account_keys(account_id))

    async def reserve(self, acc: Account, amount: int) -> tuple[str | None, int, int]:
        """(the hold's member, or None when the balance cannot cover ``amount``; bal; res):
        one credit claim on its own (a request's admission claims it with the rest)."""
        admission = Admission()
        claim = admission.add(CreditClaim(acc, amount, shared=True))
        await self.counters.admit(admission)
        return (claim.hold or None), claim.balance, claim.reserved

    async def grow(self, acc: Account, member: str, held: int, amount: int) -> str | None:
        """Make the hold ``member`` (of ``held``) one of ``amount``: its new member, or None
        when the account does not have the difference free (the old hold stays)."""
        new = f"{self.counters.new_id()}|{amount}"
        keys = self._keys(acc.id)
        args = ["", "", member, held_of(member, held), new, amount, self.counters.ttl_ms]
        ok, bal, res = await self.link.run(lua.GROW, keys, args)
        if ok == -1:
            args[0:2] = await self.seed(acc.id)
            ok, bal, res = await self.link.run(lua.GROW, keys, args)
        if ok != 1:
            return None
        self.counters.forget_live(keys[1], member)
        self.counters.live.setdefault(keys[1], set()).add(new)
        return new

    def _settle_script(self, acc: Account, member: str, held: int, cost: int, row: LedgerRow | None,
                       totals: Totals | None = None) -> tuple[list[str], list]:
        keys = self._keys(acc.id)
        self.counters.forget_live(keys[1], member)
        payload = b"" if row is None else orjson.dumps(tuple(row))
        done = self.prefix + "done:" + done_marker(member, row)
        keys, args = [*keys, self.stream, done], ["", "", member, held_of(member, held), cost, payload, acc.id]
        if totals is not None:
            total_keys = self.counters.total_keys
            for name in totals.names:
                keys += total_keys(name)
            args += totals.holds
        return keys, args

    async def settle(self, acc: Account, member: str, held: int, cost: int, row: LedgerRow | None) -> Settled:
        keys, args = self._settle_script(acc, member, held, cost, row)
        reply = await self.link.run(lua.SETTLE, keys, args)
        if reply[0] == -1:  # Redis lost the account since the hold (restarted empty): seed it again
            args[0:2] = await self.seed(acc.id)
            reply = await self.link.run(lua.SETTLE, keys, args)
        settled = self.answered(cost, reply)
        assert settled is not None
        return settled

    def settle_sent(self, acc: Account, member: str, held: int, cost: int, row: LedgerRow | None,
                    totals: Totals | None = None) -> asyncio.Future | None:
        """``settle``'s script sent with this turn's write, its reply not awaited (``answered``
        reads it), with the request's budgets (``totals``: settled in the same script, the
        charge as their spend; ``totals_answered`` reads that part). None when it could not be
        sent (``settle`` it the awaited way, and the budgets with ``Counters.settle_totals``)."""
        keys, args = self._settle_script(acc, member, held, cost, row, totals)
        return self.link.send(lua.SETTLE, keys, args)

    def answered(self, cost: int, reply: object) -> Settled | None:
        """What a ``SETTLE`` reply says was charged; None when the script must run again the
        awaited way (an error Redis answered, e.g. NOSCRIPT, or an account Redis lost: its
        done marker makes a second run change nothing)."""
        if not isinstance(reply, list) or reply[0] == -1:
            return None
        charge, bal, res = int(reply[0]), int(reply[1]), int(reply[2])
        if len(reply) > 3 and not reply[3] and charge < cost:
            throttled(log, logging.WARNING, "hold_expired", "a credit hold expired before its request settled "
                      "(the process was stalled longer than storage.counters hold_ttl=%gs); it was charged "
                      "%d of %d micro-USD, what the account had free", self.link.hold_ttl, charge, cost)
        return Settled(charge, bal, res)

    def release(self, acc: Account, member: str, held: int) -> None:
        keys = self._keys(acc.id)
        self.counters.forget_live(keys[1], member)
        self.counters.send_behind(lua.RELEASE, keys, [member, held_of(member, held)])

    async def topup(self, account_id: str, amount: int, version: int, balance_after: int) -> None:
        await self.link.run(lua.TOPUP, [self.prefix + "acct:" + account_id, self.prefix + "topups:" + account_id],
                            [amount, version, balance_after])

    async def answering(self, until: float) -> bool:
        """Whether Redis answers before ``until`` (``time.monotonic()``), waiting for the
        link's probe to reconnect while it is down (a stop gives the charges Redis missed
        this chance, for ``back_s``)."""
        link = self.link
        while link.down and time.monotonic() < until:
            await asyncio.sleep(0.05)
        return not link.down and time.monotonic() < until

    async def live(self, account_id: str) -> tuple[int, int] | None:
        """(bal, res) as Redis has them, or None when the account is not in Redis yet."""
        reply = await self.link.run(lua.LIVE, self._keys(account_id), [])
        return (int(reply[0]), int(reply[1])) if reply else None

    # -- the ledger stream (the writers' side) ------------------------------------------------------
    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        from redis.exceptions import ResponseError

        try:
            await self.link.call(lambda: self.link.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def take(self, count: int, claim: bool) -> list[StreamEntry]:
        """Up to ``count`` entries for this writer: new ones, and (``claim``) those another
        writer took and left unacknowledged for ``hold_ttl``."""
        from redis.exceptions import ResponseError

        try:
            return await self._take(count, claim)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False  # Redis lost its data (a restart without persistence): make it again
            return await self._take(count, claim)

    async def _take(self, count: int, claim: bool) -> list[StreamEntry]:
        await self._ensure_group()
        redis = self.link.redis
        consumer = self.counters.instance
        raw: list = []
        if claim:
            reply = await self.link.call(lambda: redis.xautoclaim(self.stream, GROUP, consumer, self.counters.ttl_ms,
                                                          start_id="0-0", count=count))
            raw += reply[1]
        # On a pipelined connection of the writer's own, framed by hiredis: redis-py built a dict
        # per entry in Python (a few microseconds a row, every row the fleet writes); its own,
        # so that a big batch's reply never holds up the replies of the requests' scripts.
        self._pipe = pipe = await self.link.other_pipe(self._pipe)
        reply = await self.link.command(pipe, "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count,
                                        "STREAMS", self.stream, ">")
        for _stream, entries in reply or ():
            raw += [(entry_id, _fields(fields)) for entry_id, fields in entries]
        out, gone = _entries(raw)
        if gone:  # deleted meanwhile, or set aside: acknowledged (and deleted), never taken again
            await self._drop(gone)
        return out

    async def take_mine(self, count: int) -> list[StreamEntry]:
        """Up to ``count`` entries this writer took and has not acknowledged: the stream gave
        them, and a step stopped half-way (a shutdown cancelled it while the reply was on its
        way, or before the acknowledgement) lost them. Read at a clean stop, so that they are
        stored now, not claimed by another writer ``hold_ttl`` later (or at the next start)."""
        from redis.exceptions import ResponseError

        await self._ensure_group()
        redis = self.link.redis
        consumer = self.counters.instance
        while True:
            try:
                reply = await self.link.call(lambda: redis.xreadgroup(GROUP, consumer, {self.stream: "0"},
                                                                      count=count))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._group_ready = False  # Redis lost its data: nothing is pending any more
                return []
            raw = [e for _stream, entries in reply or () for e in entries]
            out, gone = _entries(raw)
            if gone:  # pending, but deleted from the stream (stored and deleted, not acknowledged), or set aside
                await self._drop(gone)
            if out or not gone:
                return out

    async def leave(self) -> None:
        """Remove this writer from the group when it holds nothing (shutdown): consumers
        would pile up otherwise, one per process ever started (CLI commands too)."""
        if not self._group_ready:
            return
        redis, consumer = self.link.redis, self.counters.instance
        pending = await self.link.call(lambda: redis.xpending_range(self.stream, GROUP, "-", "+", 1,
                                                                    consumername=consumer))
        if not pending:
            await self.link.call(lambda: redis.xgroup_delconsumer(self.stream, GROUP, consumer))

    async def done(self, entries: list[StreamEntry]) -> None:
        """These entries are stored: acknowledged and deleted, and their done markers, kept
        until now, expire ``MARKER_AFTER_STORED_S`` from now (for a retried ``SETTLE``)."""
        await self._drop([e.entry_id for e in entries], [e.done for e in entries if e.done])

    def marker_name(self, e: StreamEntry) -> str | None:
        """What names the entry's done marker (``done_marker``), as ``tollway_redis_owed`` keeps it."""
        head = self.prefix + "done:"
        if e.done is not None:
            return e.done[len(head):] if e.done.startswith(head) else None
        return e.row.id if e.row is not None else None

    async def _drop(self, ids: list[bytes], markers: list[str] | None = None) -> None:
        if not ids:
            return
        self._pipe = pipe = await self.link.other_pipe(self._pipe)
        await self.link.run(lua.STREAM_DONE, [self.stream, *(markers or ())],
                            [GROUP, len(ids), lua.MARKER_AFTER_STORED_S, *ids], pipe=pipe)


def held_of(member: str, held: int) -> int:
    """What the hold ``member`` ("<hold id>|<amount>") holds in Redis: its own amount. The
    request's reservation (``held``) is the same, except for a hold taken from a lease's pool
    (``redis_leases.py``), which may hold more than the request's worst case: freeing only the
    worst case would leave the rest counted in ``res`` for good."""
    _, bar, amount = member.rpartition("|")
    return int(amount) if bar and amount.isdigit() else held


def done_marker(member: str, row: LedgerRow | None) -> str:
    """What names a charge's done marker (``<prefix>done:<it>``, set by ``SETTLE``): the row's id
    (a charge without a row: its hold's). A row is charged once, as the store keeps it once (a
    batch line's id is the line's, whichever run settles); ``redis_owed.py`` looks for it."""
    return member if row is None else row[0]


def _fields(flat: list | None) -> dict | None:
    """An entry's fields as hiredis gives them ([name, value, ...]; None: deleted) as a dict."""
    if flat is None:
        return None
    pairs = iter(flat)
    return dict(zip(pairs, pairs, strict=False))


def _entries(raw: list) -> tuple[list[StreamEntry], list[bytes]]:
    """The stream's replies as entries, and the ids of those deleted meanwhile (no fields) or
    set aside (no account and charge to be read: logged whole, see ``_entry``)."""
    out, gone = [], []
    for entry_id, fields in raw:
        entry = _entry(entry_id, fields) if fields else None
        if entry is None:
            gone.append(entry_id)
        else:
            out.append(entry)
    return out, gone


def _entry(entry_id: bytes, fields: dict) -> StreamEntry | None:
    """One entry. One that cannot be read no longer fails every take that reads it (the writer
    stalled: the entries read with it, and every later claim, waited for ever): a row that
    cannot be read is logged whole and its charge stored alone (money exact); an entry without
    a readable account and charge (no money can be booked from it) is logged whole and set
    aside (None: acknowledged and deleted like one stored)."""
    try:
        charge = int(fields[b"charge"])
        account_id = fields[b"acct"].decode()
    except (KeyError, ValueError, TypeError, UnicodeDecodeError):
        log.error("accounts writer: shared ledger stream entry %s has no account and charge that can be read; "
                  "it is set aside (removed from the stream), here whole: %r", entry_id.decode(), fields)
        return None
    data = fields.get(b"row")
    row = None
    if data:
        try:
            values = orjson.loads(data)
            values[COST] = charge  # what SETTLE charged (at most what the account had free)
            row = LedgerRow(*values)
        except (orjson.JSONDecodeError, ValueError, TypeError, IndexError, KeyError):
            log.error("accounts writer: shared ledger stream entry %s has a ledger row that cannot be read; its "
                      "charge of %d (account %s) is stored alone, the row is left out, here whole: %r",
                      entry_id.decode(), charge, account_id, data)
    done = fields.get(b"done")
    return StreamEntry(entry_id, row, account_id, charge, done.decode() if done else None)
