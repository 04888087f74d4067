"""The ledger writer's side of the shared ledger stream (``storage.counters: redis://``):
the entries it takes (``redis_credit.py``), stored once each with their charge.

- A row is stored once (its id is its table's key); a charge without a row once too (its
  entry's key, ``stream_charges.py``): two writers may hold the same entries (one slow past
  ``hold_ttl``, and another claimed them).
- A row the store refuses (``bad_rows.py``) does not stall the writer: after a transaction
  failed on a statement, the next attempt looks for such rows; each is logged once and its
  entry stored as a charge alone.
- Redis losing its data (``redis_restore.py``) while a writer holds entries it took and has
  not stored: their charges were in the Redis that is gone, and an account seeded again from
  the store before their commit would not count them (its balance in Redis too high by them:
  the fleet could spend that money again). So the writer's transaction, on PostgreSQL, holds
  a shared advisory lock from its start to its commit, and a seed (``book_shared._read_seed``)
  takes that lock exclusively (waiting for the transactions already holding it) before it
  reads; in the transaction, after the lock, the writer reads Redis's life token: unchanged
  since it took the entries, any seed in a new life comes after the lock and reads this
  commit. Changed (or the entries were taken in an earlier life, ``taken_earlier``): the
  transaction bumps the store's version and reads the balances back, and after the commit
  each account's charges are sent as a negative top-up at that version (``TOPUP``: applied
  once, and only to an account seeded before the version, i.e. before this commit; an account
  Redis does not have yet is seeded with the balance read back). On SQLite (one process) a
  seed's read waits for the writer's transaction anyway (one connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from . import bad_rows, db, redis_owed, stream_charges

if TYPE_CHECKING:
    from .book import Accounts
    from .redis_credit import StreamEntry

log = logging.getLogger("tollway.accounts")

LOCK_KEY = "hashtextextended('tollway:ledger-stream:' || current_schema(), 0)"
STREAM_LOCK = f"select pg_advisory_xact_lock_shared({LOCK_KEY})"  # a writer's transaction
SEED_LOCK = f"select pg_advisory_xact_lock({LOCK_KEY})"  # a seed, before it reads (released at once)


class StreamSteps:
    book: Accounts
    batch_rows: int
    flushes: int
    stream_rows: int

    def _stream_init(self) -> None:
        self.taken: list[StreamEntry] | None = None  # stream entries taken and not yet stored
        self.taken_life: str | None = None  # Redis's life token when they were taken
        self.taken_earlier: set[bytes] = set()  # of those, the ids taken in a life before taken_life
        self._taken_read = False  # taken_life and taken_earlier are those of ``taken`` (read after the take)
        self.stream_counted = 0.0  # time.monotonic() when ``stream_rows`` was counted (0: never)
        self._stream_refused = False  # the last attempt failed on a statement: look for bad rows
        self._last_claim = 0.0
        self._pruned = 0.0
        self._shared_lock = asyncio.Lock()

    async def flush_shared(self, mine: bool = False) -> bool:
        """With shared counters: store the ledger stream's entries this writer takes
        (see ``redis_credit.py``), each once, with its charge, in one transaction;
        ``mine``: those it took before and never acknowledged (``take_mine``). Whether Redis
        answered (False: what this step did not store waits in Redis, or here, ``taken``)."""
        if self.book.shared is None:
            return True
        async with self._shared_lock:
            return await self._flush_shared(mine)

    async def drain_shared(self) -> bool:
        """Store every entry the stream has for this writer now (shutdown, tests), the
        charges this process is still sending behind included: first those it took and
        never acknowledged (a step the shutdown stopped half-way), then new ones. Whether
        it got to the end (False: a step failed because Redis did not answer; the stop tries
        again while Redis answers within ``back_s``, ``Writer._drain_at_stop``)."""
        await self.book.settles_done()
        for mine in (True, False):
            for _ in range(10_000):
                done = self.flushes
                try:
                    answered = await self.flush_shared(mine)
                except Exception:
                    if not self._stream_refused:
                        raise
                    answered = await self.flush_shared(mine)  # again, without the rows the store refuses
                if not answered:
                    return False
                if self.flushes == done:
                    break
        return True

    async def _life(self) -> str | None:
        restorer = self.book.restorer
        return await restorer.token() if restorer is not None else None

    async def _flush_shared(self, mine: bool = False) -> bool:
        book = self.book
        shared = book.shared
        assert shared is not None
        from proxy import ProxyError

        await book.push_topups()
        await book.push_settles()
        link = shared.link
        restorer = book.restorer
        before: str | None = None
        try:
            pipe = link.redis.pipeline(transaction=False)
            pipe.xlen(shared.stream)
            if restorer is not None:
                pipe.get(restorer.life)  # Redis's life before a take (one round trip with the count)
            replies = await link.call(pipe.execute)
            self.stream_rows, self.stream_counted = int(replies[0]), time.monotonic()
            before = replies[1].decode() if len(replies) > 1 and replies[1] is not None else None
        except ProxyError:
            pass  # the counters are down: keep the last count
        now = time.monotonic()
        claim = now - self._last_claim >= shared.counters.ttl_ms / 1000
        try:
            fresh = self.taken is None
            if fresh:
                if mine:
                    entries = await shared.take_mine(self.batch_rows)
                else:
                    entries = await shared.take(self.batch_rows, claim)
                    if claim:
                        self._last_claim = now
                if not entries:
                    return True
                self.taken, self._taken_read = entries, False
            entries = self.taken
            if not self._taken_read:
                # Redis's life they were taken in, read after the take; when Redis did not answer
                # then, at the retry (the stop's), with which of them it no longer has pending. (A
                # life left unread was the last take's, or None: all of them were stored as taken
                # in a life since lost, and taken from Redis's balance a second time.)
                self.taken_life = await self._life()
                self.taken_earlier = set()
                if not fresh or before != self.taken_life:  # Redis may have lost its data since the take
                    self.taken_earlier = await self._gone(entries)
                self._taken_read = True
            if self._stream_refused:
                entries = self.taken = await self._without_bad_rows(entries)
            try:
                topups = await self._store(entries)
            except ProxyError:
                raise  # (Redis, read in the transaction: not a statement)
            except Exception as exc:
                self._stream_refused = bad_rows.on_a_statement(exc)
                raise
            self._stream_refused = False
            self.taken = None
            self.flushes += 1
            if topups:
                book.pending_topups.extend(topups)
            await shared.done(entries)
            self.stream_rows = max(self.stream_rows - len(entries), 0)
            if topups:
                await book.push_topups()
        except ProxyError:
            return False  # the counters are down: the entries wait in Redis (or here, taken)
        return True

    async def _gone(self, entries: list[StreamEntry]) -> set[bytes]:
        """The ids of these entries the stream no longer has pending (taken in a Redis life
        that ended since)."""
        from .redis_credit import GROUP

        shared = self.book.shared
        assert shared is not None
        link = shared.link
        pipe = link.redis.pipeline(transaction=False)
        for e in entries:
            pipe.xpending_range(shared.stream, GROUP, e.entry_id, e.entry_id, 1)
        replies = await link.call(pipe.execute)
        return {e.entry_id for e, pending in zip(entries, replies, strict=True) if not pending}

    async def _without_bad_rows(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        """The entries, those whose row the store refuses made charges alone (logged once)."""
        store = self.book.store
        stored = await db.existing_rows(store, [e.row.id for e in entries if e.row is not None])
        probe: list[int] = []
        for i, e in enumerate(entries):
            if e.row is not None and e.row.id not in stored:
                stored.add(e.row.id)
                probe.append(i)
        bad = await bad_rows.refused(store, [entries[i].row for i in probe])
        out = list(entries)
        for j in bad:
            e = out[probe[j]]
            assert e.row is not None
            bad_rows.say_refused(e.row, f"a shared ledger stream entry; its charge of {e.charge} is stored alone")
            out[probe[j]] = e._replace(row=None)
        return out

    async def _store(self, entries: list[StreamEntry]) -> list[tuple[str, int, int, int]]:
        """Store the entries once each, with their charges, in one transaction; the negative
        top-ups Redis needs for charges taken in a life it has lost (see the module's doc)."""
        book = self.book
        shared = book.shared
        assert shared is not None
        async with book.lock, book.store.transaction() as tx:
            if tx.kind == "postgres":
                await tx.execute(STREAM_LOCK)
            life = await self._life()
            earlier = {e.entry_id for e in entries} if life != self.taken_life else self.taken_earlier
            stored = await db.existing_rows(tx, [e.row.id for e in entries if e.row is not None])
            # (after the rows are read: a stop's owed row commits with its ledger row, redis_owed.keep)
            resolved = await redis_owed.resolve(tx, [m for e in entries if (m := shared.marker_name(e))])
            rows, deltas, alone = [], {}, []
            moved: dict[str, int] = {}  # account -> charges of entries whose Redis life is gone
            for e in entries:
                if e.row is not None:
                    if e.row.id in stored:
                        continue
                    stored.add(e.row.id)
                    rows.append(e.row)  # (its cost is the charge: redis_credit._entries)
                elif e.charge:
                    alone.append(e)
                    continue
                _add(deltas, moved, e, earlier)
            if alone:
                now = time.time()
                new = await stream_charges.fresh(tx, [stream_charges.key(shared.stream, e.entry_id) for e in alone],
                                                 now)
                for e in alone:
                    if stream_charges.key(shared.stream, e.entry_id) in new and shared.marker_name(e) not in resolved:
                        _add(deltas, moved, e, earlier)  # (resolved: the stop that kept it charged the store)
                if now - self._pruned >= stream_charges.PRUNE_EVERY_S:
                    self._pruned = now
                    await stream_charges.prune(tx, now)
            if rows or deltas:
                await db.write_rows(tx, rows, deltas)
            moved = {aid: c for aid, c in moved.items() if c}
            if not moved:
                return []
            version = await db.bump_version(tx)
            balances = await _balances(tx, sorted(moved))
        log.warning("storage.counters: %d account(s) had charges taken off the ledger stream in a Redis life that "
                    "ended before they were stored; they are taken from Redis's balances (version %d)",
                    len(moved), version)
        return [(aid, -moved[aid], version, balances.get(aid, 0)) for aid in sorted(moved)]


def _add(deltas: dict[str, list[int]], moved: dict[str, int], e: StreamEntry, earlier: set[bytes]) -> None:
    if not e.charge:
        return
    d = deltas.setdefault(e.account_id, [0, 0])
    d[0] -= e.charge
    d[1] += e.charge
    if e.entry_id in earlier:
        moved[e.account_id] = moved.get(e.account_id, 0) + e.charge


async def _balances(tx, ids: list[str]) -> dict[str, int]:
    sql = f"select id, balance_micro_usd from tollway_accounts where id in ({', '.join('?' for _ in ids)})"
    return {r[0]: int(r[1]) for r in await tx.fetchall(sql, ids)}
