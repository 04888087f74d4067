"""The accounts book's money in the shared counters (``storage.counters: redis://``): seeding an
account Redis does not have, charging Redis holds (awaited, or sent behind without waiting),
charges and top-ups kept while Redis is down and sent when it is back, and the balance as the
whole fleet sees it. ``SharedCredit`` (``redis_credit.py``) speaks to Redis; this is the book's
side: what it remembers, retries and tells the writer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from proxy.logs import throttled

from . import db
from . import redis_owed_totals as owed_totals
from .book_memory import BookMemory
from .claims import LOCAL_HOLD
from .model import Account
from .redis_credit import Totals
from .writer_stream import SEED_LOCK

if TYPE_CHECKING:
    from .budgets import BudgetHold
    from .db import LedgerRow

log = logging.getLogger("tollway.accounts")

SEED_TIMEOUT_S = 5.0  # reading a balance the shared counters do not have yet (the request waits on it)


class SharedMoney(BookMemory):
    async def _seed(self, account_id: str) -> tuple[int, int]:
        """An account's stored balance and the version it was read at, fresh from the store
        (shared counters seed an account they do not have yet from it: rare, once per
        account per Redis life), once every instance has put back the holds Redis lost
        with its data, if it did (``redis_restore.py``)."""
        await self.holds_back()
        return await self._read_seed(account_id)

    async def holds_back(self) -> None:
        """Before seeding anything in Redis: if Redis lost its data, the holds of the
        requests in flight first (``redis_restore.py``)."""
        if self.restorer is not None:
            await self.restorer.ensure()

    async def _read_seed(self, account_id: str) -> tuple[int, int]:
        from proxy import ProxyError

        try:
            async with asyncio.timeout(SEED_TIMEOUT_S):
                if self.store.kind == "postgres":
                    # After the ledger writers' transactions that began before: one that took its
                    # entries in a Redis life since lost, and did not see the loss, commits first
                    # and is read here (writer_stream.py). (On SQLite the one connection waits.)
                    await self.store.execute(SEED_LOCK)
                found = await db.load_accounts(self.store, [account_id])
        except Exception:
            raise ProxyError(503, "the gateway's store (storage.url) cannot be reached to read this key's balance; "
                                  "retry shortly", code="storage_unavailable", headers={"Retry-After": "1"}) from None
        return (found[0].balance, found[0].version) if found else (0, 0)

    def left(self, acc: Account) -> tuple[int, int]:
        """(available, reserved) as last seen: for the messages of a refusal."""
        live = self.live.get(acc.id)
        if live is None:
            return acc.available, acc.reserved
        return live[0] - live[1], live[1]

    async def settle_shared(self, acc: Account, hold: str, reserved: int, cost: int, row: LedgerRow | None) -> int:
        """Charge a Redis hold and queue its ledger row (``row``, whose cost is replaced
        by the charge) in one step; returns what was taken."""
        assert self.shared is not None
        from proxy import ProxyError

        try:
            done = await self.shared.settle(acc, hold, reserved, cost, row)
        except ProxyError:
            # Redis is down: the answer went out, so its charge is kept and sent when Redis is
            # back (the writer retries; the script's done marker makes a retry change nothing).
            self.pending_settles.append((acc, hold, reserved, cost, row))
            throttled(log, logging.WARNING, "settle_deferred", "storage.counters: Redis is down; %d charge(s) "
                      "wait in this process until it is back", len(self.pending_settles))
            return min(cost, reserved)
        self.live[acc.id] = (done.balance, done.reserved)
        return done.charge

    def settle_shared_behind(self, acc: Account, hold: str, reserved: int, cost: int, row: LedgerRow | None,
                             budget: BudgetHold | None = None) -> int:
        """``settle_shared`` for a cost within its hold (``cost <= reserved``), without waiting:
        the hold is still there and covers it, so the charge IS the cost, known now. The
        script (the charge with its row, and the request's ``budget`` settled with it) goes
        with this turn's write to Redis (its reply read behind, no task; ``charges_written``
        waits for the write, not for Redis). Sent exactly once (a script that must run again,
        NOSCRIPT or an account Redis lost, runs again the awaited way, the budget's settle on
        its own: the done marker and the budget's hold members make that change nothing of
        what had run); shutdown waits for it (``settles_done``)."""
        assert self.shared is not None
        totals = None
        if budget is not None:
            totals = Totals(budget.names, tuple(h for h in budget.holds if h != LOCAL_HOLD))
        sent = self.shared.settle_sent(acc, hold, reserved, cost, row, totals)
        if sent is None:  # no pipe, or Redis down: the awaited way (it keeps the charge until Redis is back)
            self._settle_behind(acc, hold, reserved, cost, row, budget)
            return cost
        if totals is not None:
            self.shared.counters.totals_sent(totals.names, cost)
        self.settling.add(sent)
        sent.add_done_callback(lambda done: self._settle_read(done, acc, hold, reserved, cost, row, totals, budget))
        return cost

    async def charges_written(self) -> None:
        """Once the charges sent behind in this turn are written to Redis's socket (the kernel
        delivers them even if this process is killed the next instant): the ledger waits for
        it before an answer's last bytes go out, so no answer is given away by a kill -9."""
        written = self.shared.link.written() if self.shared is not None else None
        if written is not None:
            await written

    def _settle_read(self, done: asyncio.Future, acc: Account, hold: str, reserved: int, cost: int,
                     row: LedgerRow | None, totals: Totals | None = None, budget: BudgetHold | None = None) -> None:
        self.settling.discard(done)
        settled = None
        shared = self.shared
        assert shared is not None
        if not done.cancelled() and done.exception() is None:
            settled = shared.answered(cost, done.result())
        if settled is None:  # an error Redis answered, or the connection failed: again, awaited
            if totals is not None:  # (what the sent script counted is made up by the settle sent again)
                shared.counters.totals_sent(totals.names, -cost)
            self._settle_behind(acc, hold, reserved, cost, row, budget)
            return
        self.live[acc.id] = (settled.balance, settled.reserved)
        if totals is not None:
            reply = done.result()
            shared.counters.totals_settled(totals.names, settled.charge, totals.holds, [int(v) for v in reply[4]])

    def _settle_behind(self, acc: Account, hold: str, reserved: int, cost: int, row: LedgerRow | None,
                       budget: BudgetHold | None = None) -> None:
        task = asyncio.ensure_future(self.settle_shared(acc, hold, reserved, cost, row))
        self.settling.add(task)
        task.add_done_callback(self._settle_done)
        if budget is not None and self.budgets is not None:  # (its own script: SETTLE_TOTALS, sent behind)
            self.budgets.settle(budget, cost)

    def _settle_done(self, task: asyncio.Task) -> None:
        self.settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            throttled(log, logging.ERROR, "settle_failed", "storage.counters: a charge sent behind failed",
                      exc_info=task.exception())

    async def settles_done(self) -> None:
        """Wait for the charges sent behind (shutdown, tests)."""
        while self.settling:
            await asyncio.gather(*list(self.settling), return_exceptions=True)

    async def push_settles(self) -> None:
        """Send the charges that waited for Redis (oldest first), then the budget settles
        (``redis_owed_totals.py``)."""
        from proxy import ProxyError

        async with self.pushing:
            try:
                while self.pending_settles and self.shared is not None:
                    if self.shared.link.down:
                        return  # (no store read for each while Redis is away: the next pass once it answers)
                    acc, hold, reserved, cost, row = self.pending_settles[0]
                    if row is None or not await self._stored(row[0]):
                        await self.shared.settle(acc, hold, reserved, cost, row)
                    self.pending_settles.pop(0)
                if self.shared is not None:
                    await owed_totals.push(self.shared.counters)
            except ProxyError:
                return

    async def _stored(self, row_id: str) -> bool:
        """Whether the store has this row: a kept charge whose ``SETTLE`` Redis ran (its reply
        was lost) and whose stream entry a writer stored. Not sent again: its done marker lasts
        only ``MARKER_AFTER_STORED_S`` past that store, and this retry may come later (Redis out
        of this process's reach meanwhile). Store down: sent, and the marker decides."""
        try:
            return bool(await db.existing_rows(self.store, [row_id]))
        except Exception:
            return False

    async def current(self, acc: Account) -> Account:
        """The account as the whole fleet sees it now (with shared counters, Redis's
        balance and holds; the store's lags by the write-behind interval)."""
        if self.shared is None or acc.unlimited:
            return acc
        live = await self.shared.live(acc.id)
        if live is None:
            return acc
        balance, reserved = live
        if self.shared.counters.leases is not None:  # (this instance's unused pool is not held for anyone)
            reserved = max(reserved - self.shared.counters.leases.pooled(acc.id), 0)
        # Charged in Redis, not stored yet: spent too.
        return replace(acc, balance=balance, reserved=reserved, spent=acc.spent + max(acc.balance - balance, 0))

    async def current_many(self, accs: Iterable[Account]) -> dict[str, Account]:
        """``current`` of each account, by id, for the admin API and the dashboard: with shared
        counters a process's own copy of a balance misses what other processes charged (it
        showed an account that had spent $1.80 of $2.00 as untouched). The reads go to Redis
        together (one pipelined write). With the counters down: the accounts as this process
        has them, so that an admin change that was made still answers with its key."""
        from proxy import ProxyError

        unique = {acc.id: acc for acc in accs}
        if self.shared is None:
            return unique
        try:
            return {acc.id: acc for acc in await asyncio.gather(*(self.current(a) for a in unique.values()))}
        except ProxyError:
            return await self._as_stored(unique)

    async def _as_stored(self, unique: dict[str, Account]) -> dict[str, Account]:
        """The accounts while the counters are down: the balance and spend the store has (behind
        Redis by the ledger's write-behind), less the charges this process keeps for Redis. A
        process's own copy is no answer: with shared counters it is the balance read at start or
        at the last admin change (an account that had spent showed as untouched). The store down
        too: that copy, all there is."""
        try:
            async with asyncio.timeout(SEED_TIMEOUT_S):
                stored = {acc.id: acc for acc in await db.load_accounts(self.store, list(unique))}
        except Exception:
            return unique
        kept: dict[str, int] = {}
        for acc, _hold, reserved, cost, _row in self.pending_settles:
            kept[acc.id] = kept.get(acc.id, 0) + min(cost, reserved)
        return {aid: replace(acc, balance=stored[aid].balance - kept.get(aid, 0), reserved=0,
                             spent=stored[aid].spent + kept.get(aid, 0)) if aid in stored else acc
                for aid, acc in unique.items()}

    async def shared_topup(self, aid: str, micro: int) -> None:
        """Add a stored top-up to the account's balance in Redis (once: see redis_credit.py)."""
        if self.shared is None:
            return
        acc = self.accounts[aid]
        self.pending_topups.append((aid, micro, acc.version, acc.balance))
        await self.push_topups()

    async def push_topups(self) -> None:
        """Send the top-ups Redis has not got yet (the writer retries while it is down)."""
        from proxy import ProxyError

        async with self.pushing:
            while self.pending_topups and self.shared is not None:
                aid, micro, version, balance = self.pending_topups[0]
                try:
                    await self.holds_back()  # a top-up makes an account Redis lost, without seeding it
                    await self.shared.topup(aid, micro, version, balance)
                except ProxyError:
                    return  # counters down: the money is stored; Redis gets it when it is back
                self.pending_topups.pop(0)
