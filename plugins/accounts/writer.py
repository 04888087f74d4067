"""The write-behind writer: one task that persists ledger rows and balance changes.

A request only appends a ``LedgerRow`` to a list (``append``) or adds to an
account's delta (``Accounts.settle``). The writer takes both and writes them
in ONE transaction, so the stored balances and the stored ledger always
agree. It also polls the store's version counter for changes made by other
processes (the CLI).

When: a flush is due ``flush_s / 2`` after the OLDEST row waiting (not a
sleep after the previous flush), leaving the other half of ``flush_s`` for
the commit; sooner when ``batch_rows`` rows wait, and sooner when recent
flushes ended late (``due_after``): under a saturated core a flush's wall is
mostly waiting (each of its awaits waits a whole loop turn of every
connection's work, SQLite's thread waits for the GIL, a WAL checkpoint rides
on a commit), so the due time is ``flush_s`` less what recent flushes took
past their due time, less a fifth of ``flush_s`` in hand. So a row is
committed within ``flush_s`` of being queued unless a commit takes longer
than ``flush_s / 2`` and longer than recent ones, or the process is starved of
CPU for that long.

Guarantees: a graceful shutdown writes everything. A crash (kill -9) loses
the rows queued in the last ``flush_s`` before it, with the balance changes
they carried, never more (SQLite runs in WAL mode with ``synchronous=normal``:
a committed flush survives a process crash; a power cut may also lose the
last committed transaction). A batch whose commit raised is kept and retried
whole; the batch number written with it (``tollway_meta``, one row per
process) tells whether a commit that raised went through after all, so no
batch is written twice or lost. A batch that failed on a statement (not on an
unreachable store) is retried without the rows that could never be stored (an
id stored already, a row the store refuses: ``bad_rows.py``), each logged once.
The shared ledger stream's side (Redis): ``writer_stream.py``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.background import stop_task
from proxy.logs import throttled
from proxy.store import unreachable

from . import bad_rows, db, redis_owed
from .writer_stream import StreamSteps

if TYPE_CHECKING:
    from .book import Accounts
    from .db import LedgerRow
    from .redis_credit import SharedCredit

log = logging.getLogger("tollway.accounts")

ROW_TIME = db.LEDGER_COLUMNS.index("time")  # (rows may be plain tuples: plugins/ledger.py)
STOP_WAIT_S = 10.0  # a stop lets the writer's current step finish for this long, then cancels it
LATE_DECAY = 0.99  # a flush's lateness, kept as the slowest recent one's, fades by this each flush after


def due_after(flush_s: float, late_s: float) -> float:
    """Seconds after the oldest row waiting that its flush is due: half of ``flush_s`` (the
    other half for the commit), sooner when recent flushes ended ``late_s`` past their due
    time, so that due + late stays a fifth of ``flush_s`` short of it (a WAL checkpoint's fsyncs
    ride on some commits unannounced: ~100 ms on a slow disk); never sooner than a
    twentieth of ``flush_s`` (rows keep being gathered: a flush's fixed cost is paid for
    many, not one)."""
    return max(min(flush_s / 2, flush_s * 0.8 - late_s), flush_s / 20)


@dataclass(slots=True)
class Batch:
    rows: list[LedgerRow]
    deltas: dict[str, list[int]]  # account id -> [balance delta, spent delta]
    seq: int


class Writer(StreamSteps):
    def __init__(self, book: Accounts, flush_s: float, batch_rows: int, poll_s: float) -> None:
        self.book = book
        self.flush_s = max(flush_s, 0.001)
        self.batch_rows = max(batch_rows, 1)
        self.poll_s = poll_s
        self.rows: list[LedgerRow] = []
        self.failed: Batch | None = None  # a batch whose commit raised: checked, then retried whole
        self.marker = "writer:" + secrets.token_hex(8)
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._due: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.flushes = 0  # completed flushes that wrote something (tests, metrics)
        self.oldest_at = 0.0  # time.monotonic() when the oldest row in ``rows`` was queued
        self.due_s = self.flush_s / 2  # the next oldest row's flush is due this long after it is queued
        self.late_s = 0.0  # how long past its due time the slowest recent flush ended (fading)
        self._oldest_due = self.due_s  # ``due_s`` when the oldest row in ``rows`` was queued
        self._refused = False  # the failed batch's commit failed on a statement: look for bad rows
        self._stream_init()  # the shared ledger stream's side (writer_stream.py)
        self.max_rows = 100_000  # the queue's bound (plugins.ledger.max_queue_rows)
        self.stream_rows = 0  # the shared ledger stream's entries not yet stored, as last counted
        self.store_down = False  # the last flush could not reach the store
        self.refused = 0  # requests refused at the bound during this outage (said in the logs)
        self._stopping = False
        self.owed_due = True  # what stops kept for Redis may wait in the store (see poll)

    def append(self, row: LedgerRow) -> None:
        """Queue one ledger row (the hot path: no I/O; one timer per flush, not per row)."""
        rows = self.rows
        if not rows:
            self.oldest_at = time.monotonic()
            self._oldest_due = self.due_s
        rows.append(row)
        if len(rows) >= self.batch_rows:
            self._wake.set()
        elif self._due is None and self._loop is not None:
            # The oldest row waiting: its flush is due half an interval from now (sooner when
            # recent flushes ended late: ``due_after``).
            self._due = self._loop.call_later(self.due_s, self._wake.set)

    def queued(self) -> int:
        """Ledger rows not yet in the store: this process's, and the fleet's stream (as last counted)."""
        failed = self.failed
        return len(self.rows) + (len(failed.rows) if failed is not None else 0) + self.stream_rows

    def full(self) -> bool:
        """The queue is at its bound: new requests are refused (``plugins/ledger.py``) rather than
        queue rows that might be lost. (``queued()``, inline: it is asked once per request.)"""
        failed = self.failed
        return len(self.rows) + (len(failed.rows) if failed is not None else 0) + self.stream_rows >= self.max_rows

    def refuse_one(self) -> None:
        """Count (and say, at most every 10 s) a request refused at the bound."""
        self.refused += 1
        throttled(log, logging.ERROR, "ledger_full", "ledger queue full: %d rows wait for the store "
                  "(plugins.ledger.max_queue_rows=%d); new requests are refused (503 storage_unavailable) until "
                  "it takes rows again (%d refused so far)", self.queued(), self.max_rows, self.refused)

    def backlog(self) -> tuple[int, float]:
        """(rows not yet in the store, seconds the oldest of them has waited), for metrics."""
        failed = self.failed.rows if self.failed is not None else []
        if failed:
            return len(failed) + len(self.rows), time.time() - failed[0][ROW_TIME]
        if self.rows:
            return len(self.rows), time.monotonic() - self.oldest_at
        return 0, 0.0

    def unwritten(self, account_id: str) -> tuple[int, int]:
        """(balance, spent) changes of this account not yet in the store."""
        d = self.book.dirty.get(account_id)
        bal, spent = (d[0], d[1]) if d is not None else (0, 0)
        if self.failed is not None:
            f = self.failed.deltas.get(account_id)
            if f is not None:
                bal, spent = bal + f[0], spent + f[1]
        return bal, spent

    def start(self) -> None:
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="tollway-accounts-writer")

    async def stop(self) -> None:
        # The loop ends after the step it is in (a step cut half-way may have taken stream
        # entries it never stored); only a step that outlasts STOP_WAIT_S is cancelled.
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and not (await asyncio.wait({task}, timeout=STOP_WAIT_S))[0]:
            await stop_task(task)
        self._disarm()
        try:
            await self._last_writes()
        finally:  # (also when the store is down: what Redis was owed is said, with its count)
            await self._keep_owed()
        try:
            await db.forget_marker(self.book.store, self.marker)
        except Exception:  # only tidiness: the row is one small line per process
            log.warning("accounts writer: could not remove its batch marker %s", self.marker)

    async def _last_writes(self) -> None:
        """A stop's writes: the queue, then (shared counters) the fleet's stream and the charges
        Redis did not get, while Redis answers within ``SharedCredit.back_s``. A drain it
        leaves unfinished is said in one line (``_say_left``)."""
        shared = self.book.shared
        drained = shared is None
        try:
            try:
                await self.flush()
            except Exception:
                if not self._refused:
                    raise
                await self.flush()  # again, without the rows the store refuses (bad_rows.py)
            if shared is not None:
                drained = await self._drain_at_stop(shared)
        except BaseException as exc:
            if shared is not None:
                self._say_left(shared, f"{type(exc).__name__}: {exc}")
            raise
        if shared is None:
            return
        if not drained:
            self._say_left(shared, f"Redis did not answer again within {shared.back_s:g}s")
        elif self.taken is None:
            try:
                await shared.leave()
            except Exception:  # only tidiness
                log.warning("accounts writer: could not leave the ledger stream's consumer group")

    async def _drain_at_stop(self, shared: SharedCredit) -> bool:
        """What the fleet queued in Redis, and the charges Redis did not get (a blip, or a timeout
        under load): a drain a step of which failed because Redis did not answer, or that left
        charges waiting for Redis, is done again while Redis answers again within
        ``back_s``. Whether the stream has nothing left for this writer (taken or not)."""
        book = self.book
        drained = await self.drain_shared()
        back_by = time.monotonic() + shared.back_s
        while not (drained and not (book.pending_settles or book.pending_topups or shared.counters.pending_totals)) \
                and await shared.answering(back_by):
            await asyncio.sleep(0.05)  # (no tight loop when what fails is not Redis: a seed the store refused)
            drained = await self.drain_shared()
        return drained

    def _say_left(self, shared: SharedCredit, why: str) -> None:
        """One line for the entries a stop leaves in the fleet's stream (it could not drain it):
        not lost, but no instance may be left running to store them."""
        counted = "not counted by this process"
        if self.stream_counted:
            counted = f"{self.stream_rows} in all when last counted, {time.monotonic() - self.stream_counted:.1f}s ago"
        log.warning("accounts writer: stopping with the shared ledger stream %s not drained (%s): %d entries this "
                    "writer took are not stored, and the stream's entries are %s; what is left there is not lost: "
                    "the next instance's writer stores it (what this writer took, once hold_ttl=%gs has passed)",
                    shared.stream, why, len(self.taken or ()), counted, shared.counters.ttl_ms / 1000)

    async def _keep_owed(self) -> None:
        """What Redis still has not got (it stayed down for ``back_s``): the charges with their
        ledger rows, and the top-ups, kept in the store for the next instance whose counters
        answer (``redis_owed.py``)."""
        book = self.book
        totals = book.shared.counters.pending_totals if book.shared is not None else []
        count = len(book.pending_settles) + len(book.pending_topups)
        if not count and not totals:
            return
        try:
            try:
                await redis_owed.keep(book)
            except Exception as exc:
                if unreachable(exc):
                    raise
                # Once more: a writer storing the same row from the stream meanwhile (Redis ran the
                # charge after all) fails this transaction on its id; the next one finds it stored.
                await redis_owed.keep(book)
        except Exception as exc:
            log.error("accounts writer: stopping with %d charge(s) and %d top-up(s) Redis never got (it was down) "
                      "and %d budget settle(s), and the store could not keep them either (%s: %s): those charges are "
                      "not billed, those top-ups are missing from Redis's balances and those budgets' totals keep "
                      "their holds without their spend", len(book.pending_settles), len(book.pending_topups),
                      len(totals), type(exc).__name__, exc)
            for acc, _hold, reserved, cost, row in book.pending_settles:  # (whole: to be billed by hand)
                log.error("accounts writer: a charge not billed: account %s, %d micro-USD, ledger row %r", acc.id,
                          max(min(cost, reserved), 0), None if row is None else tuple(row))
            return
        log.warning("accounts writer: stopping with %d charge(s) and top-up(s) and %d budget settle(s) Redis never got "
                    "(it is down); they are stored, and applied to Redis by the next instance whose counters answer",
                    count, len(totals))

    async def poll(self) -> None:
        """Read the store's changes made elsewhere; apply what stops kept for Redis
        (``redis_owed.py``) at start and whenever the store's version moved, until all is."""
        book = self.book
        before = book.version
        await book.poll()
        self.owed_due = self.owed_due or book.version != before
        if self.owed_due and book.shared is not None:
            self.owed_due = not await redis_owed.apply(book)

    def _disarm(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None

    async def _run(self) -> None:
        last_poll = time.monotonic()
        while not self._stopping:
            try:
                # Woken by the oldest row's deadline or a full batch; else every flush_s for
                # balance changes without rows and for the polls. (asyncio.timeout, not
                # wait_for: on Python 3.11 wait_for swallows a cancel that comes as the event
                # is set, and the loop never ended: a SIGTERM that hung the stop.)
                async with asyncio.timeout(self.flush_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if self._stopping:
                return
            self._wake.clear()
            self._disarm()
            steps = [self.flush, self.flush_shared]  # each tried even when another fails
            if time.monotonic() - last_poll >= self.poll_s:
                last_poll = time.monotonic()
                steps.append(self.poll)
            failure = None
            for step in steps:
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failure = failure or exc
            if failure is not None:
                self._store_failed(failure)
            elif self.store_down and await self.book.store.ping():
                # (steps with nothing to write never reached the store: only an answer says it is back)
                self.store_down = False
                log.warning("storage: the store answers again; the queued ledger rows are written (%d "
                            "request(s) were refused at the queue's bound)", self.refused)
                self.refused = 0

    def _store_failed(self, exc: Exception) -> None:
        """One line when the store stops answering (not one per retry); a traceback only for
        what is not an outage."""
        if not unreachable(exc):
            throttled(log, logging.ERROR, "writer_flush", "accounts writer: flush failed; will retry",
                      exc_info=True)
            return
        if not self.store_down:
            self.store_down = True
            log.error("storage: the store cannot be reached (%s: %s); requests go on, their ledger rows wait "
                      "(%d now; at plugins.ledger.max_queue_rows=%d new requests are refused with 503 "
                      "storage_unavailable) and are written when it answers", type(exc).__name__, exc,
                      self.queued(), self.max_rows)

    async def flush(self) -> None:
        """Write every queued row and balance change now (and a failed batch first)."""
        async with self.book.lock:
            await self.flush_held()

    async def flush_held(self) -> None:
        """``flush`` for a caller that holds ``book.lock`` (and keeps every other flush off
        until it lets go: the budgets' read of what was spent, ``budgets.load_seeds``)."""
        book = self.book
        if self.failed is not None and await db.batch_committed(book.store, self.marker, self.failed.seq):
            self.failed = None  # its commit raised, yet it is in the store
        if self.failed is None and not self.rows and not book.dirty:
            return
        refused, self._refused = self.failed is not None and self._refused, False
        # (the oldest row of this flush's own, queued ``_oldest_due`` before it was due)
        oldest_at, oldest_due = (self.oldest_at, self._oldest_due) if self.rows else (None, 0.0)
        batch = self._take()
        try:
            if refused:
                await self._clean(batch)
            await db.store_batch(book.store, batch.rows, batch.deltas, self.marker, batch.seq)
        except BaseException as exc:
            self.failed = batch
            self._refused = bad_rows.on_a_statement(exc)
            raise
        self.failed = None
        self.flushes += 1
        if oldest_at is not None:
            self._ended_late(time.monotonic() - oldest_at - oldest_due)

    def _ended_late(self, late_s: float) -> None:
        """A flush's rows were committed ``late_s`` past their due time: the next due time
        leaves room for the slowest recent lateness (fading by ``LATE_DECAY`` a flush)."""
        self.late_s = max(late_s, self.late_s * LATE_DECAY)
        self.due_s = due_after(self.flush_s, self.late_s)

    async def _clean(self, batch: Batch) -> None:
        """Before retrying a batch whose commit failed on a statement: leave out the rows
        that can never be stored, each logged once (it stalled the writer for ever): a row
        whose id is stored already (the same id queued twice, or stored from the shared
        ledger stream meanwhile) or that the store refuses (``bad_rows.py``). The batch's
        balance changes stay (they are not the rows'): a row's charge is never dropped."""
        store = self.book.store
        stored = await db.existing_rows(store, [r[0] for r in batch.rows])
        rows = []
        for row in batch.rows:
            if row[0] in stored:
                log.error("accounts writer: ledger row %s is stored already; this copy is left out, here whole: %r",
                          row[0], tuple(row))
                continue
            stored.add(row[0])
            rows.append(row)
        for i in reversed(await bad_rows.refused(store, rows)):
            bad_rows.say_refused(rows.pop(i), "queued by this process; its balance change is kept")
        batch.rows = rows

    def _take(self) -> Batch:
        """Everything unwritten as one batch: the failed one's rows first, in order."""
        book = self.book
        rows, self.rows = self.rows, []
        deltas, book.dirty = book.dirty, {}
        failed, self.failed = self.failed, None
        if failed is not None:
            rows = failed.rows + rows
            for aid, (dbal, dspent) in failed.deltas.items():
                d = deltas.setdefault(aid, [0, 0])
                d[0] += dbal
                d[1] += dspent
        self._seq += 1
        return Batch(rows, deltas, self._seq)

