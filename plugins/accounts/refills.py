"""Refills: a grant of credits at the start of every day, week or month (a subscription).

An account with ``refill: {every: month, amount: 50.00, rollover: false}``
receives its grant once per period, at the period's start in
``billing.timezone`` (and at once for the current period when the refill is
first configured). ``rollover: true`` adds ``amount`` to the balance;
``rollover: false`` brings the balance up to ``amount`` (what is left counts
toward it, so unused credit does not pile up; a refill never takes money
away, which could leave less than requests in flight hold).

Exactly once per account and period, across restarts and processes: each
grant is a row of ``tollway_grants`` whose primary key is (account,
period), inserted in the same transaction as the balance change it makes.
A grant already there is never applied again; a second process racing for
the same grant inserts nothing (``on conflict do nothing``) and adds nothing.
With shared counters the grant is added in Redis too (``TOPUP``, once, by the
process that made it), and ``rollover: false`` tops up from the balance the
fleet sees there (charges not yet stored included).

Grants are applied off the request path, by a task that wakes once a second
and scans the accounts only when a refill period has ended or an account has
changed (the book's version moved), and on demand (``apply_due``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy import ProxyError
from proxy.background import stop_task
from proxy.logs import throttled

from .money import usd_to_micro
from .periods import Calendar

if TYPE_CHECKING:
    from .book import Accounts
    from .model import Account

log = logging.getLogger("tollway.accounts")

class Refills:
    def __init__(self, book: Accounts, calendar: Calendar, clock: Callable[[], float] = time.time,
                 interval: float = 1.0) -> None:
        self.book = book
        self.calendar = calendar
        self.clock = clock
        self.interval = interval
        self.done: dict[str, str] = {}  # account id -> the last period granted (as this process knows)
        self._next = 0.0  # when the next period of any refill begins (the task scans then)
        self._version = -1  # the book's version at the last scan (a change: scan again)
        self._task: asyncio.Task | None = None

    def due(self, now: float) -> list[tuple[Account, str]]:
        """(account, period name) for each refill whose current period has not been granted."""
        out = []
        self._next = math.inf
        for acc in self.book.accounts.values():
            refill = acc.policy.refill
            if refill is None:
                continue
            current = self.calendar.current(refill.every, now)
            self._next = min(self._next, current.end)
            period = f"{refill.every}:{current.label}"
            if self.done.get(acc.id) != period:
                out.append((acc, period))
        return out

    async def apply_due(self, *, always: bool = True) -> int:
        """Grant every refill that is due; returns how many grants this call made.
        ``always=False`` (the task's passes) skips the scan of the accounts until a
        period ends or an account changes."""
        now = self.clock()
        if not always and now < self._next and self.book.version == self._version:
            return 0
        made = 0
        try:
            for acc, period in self.due(now):
                if await self.grant(acc, period):
                    made += 1
        except BaseException:
            self._next = 0.0  # look again on the next pass
            raise
        self._version = self.book.version
        return made

    async def grant(self, acc: Account, period: str) -> bool:
        """Grant ``acc``'s refill for ``period`` unless a grant for it is recorded."""
        book = self.book
        refill = acc.policy.refill
        if refill is None or acc.unlimited:  # an unmetered account has nothing to refill
            self.done[acc.id] = period
            return False
        amount = usd_to_micro(refill.amount)
        shared = book.shared
        live = None
        if shared is not None and not refill.rollover:
            # The balance as the fleet sees it (charges may wait in the stream, not yet stored).
            got = await shared.live(acc.id)
            live = got[0] if got is not None else None
        added: int | None = None

        async def change(tx) -> None:
            nonlocal added
            # Memory is the stored balance plus what is not written yet: the balance as of now.
            balance = acc.balance if live is None else live
            add = amount if refill.rollover else max(amount - balance, 0)
            # One grant per account and period, whichever process gets there first (the others
            # wait for its commit and insert nothing).
            row = await tx.fetchone("insert into tollway_grants (account_id, period, amount_micro_usd, rollover, time) "
                                    "values (?, ?, ?, ?, ?) on conflict do nothing returning 1",
                                    (acc.id, period, add, int(refill.rollover), time.time()))
            if row is None:
                return
            if add:
                await tx.execute("update tollway_accounts set balance_micro_usd = balance_micro_usd + ? "
                                 "where id = ?", (add, acc.id))
            added = add

        async with book.lock:
            await book.write(change, (acc.id,))
        self.done[acc.id] = period
        if added:
            await book.shared_topup(acc.id, added)  # and in Redis, once, for every instance
        return added is not None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tollway-refills")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.apply_due(always=False)
            except asyncio.CancelledError:
                raise
            except ProxyError:
                pass  # the shared counters (or the store) are down, and said so: the next pass retries
            except Exception:
                throttled(log, logging.ERROR, "refills", "refills: a grant failed; will retry", exc_info=True)
            await asyncio.sleep(self.interval)
