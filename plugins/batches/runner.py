"""Running batches: each line is a detached model call through the whole pipeline
(rate limits, the credit reservation, pricing at ``price.batch_multiplier``, the
ledger), paced behind interactive traffic.

Exactly once, across crashes: a line's answer is written to the store in
``tollway_settle`` *before* the quotas plugin charges it (the batches plugin's
settle runs first), and its ledger row has a fixed id (``batch-<batch>-<line>``).
So after a crash:

- a line whose answer was not stored was not charged either (the charge and its
  ledger row come after, and are written together): it runs again;
- a line whose answer was stored but whose charge was not written yet (the
  ledger writes behind) is charged at start-up from the stored cost
  (``recover``): never twice, never free.

A line refused by a rate limit (429, the gateway's or the upstream's) is not an
answer: it stays pending and runs again after ``Retry-After``.

In a fleet (instances sharing the store), one instance runs the batches: the one that
holds the store's claim ``batches`` (``lead``); the others try to take it at each of
their passes, and one does when the holder's process ends (the database or the kernel
drops the claim with it). Every runner reading the pending lines sent a line still
running on one instance again from another, charged twice. The claim is a PostgreSQL
session's: it also goes when that session ends under a live process (PostgreSQL restarted,
the connection cut or killed), so the holder asks before each line whether its session is
still there (``holds``) and stops at once when it is not: another instance may run the
lines from now on.

Lines already on their way upstream then still finish there (at most ``concurrency`` of
them) while the new holder, finding them pending, runs them again: the upstream is called
twice (a request cannot be unsent). The line's row is the fence: its answer is stored by
one statement that finds it still ``pending`` (``store_answer``), and only the run whose
statement stored it is charged; the other run's answer is dropped, its hold given back and
no ledger row written (``forgo_charge``). So the line is in the output file once and its
customer pays once, whichever run answers first. (Why not a leader epoch checked at the
store: the old holder's answer, stored first, is as good an answer as the new one's; what
must be single is the stored answer and its charge, and the row's status already is.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from proxy import Call, Gateway, StateKey
from proxy.logs import throttled

from ..ledger import LEDGER_ID, NO_USAGE, RECORDED
from ..quotas import FINISH_DUE, RESERVATION
from .lines import ENDPOINTS
from .recovery import ledger_id, recover

if TYPE_CHECKING:
    from plugins.accounts import Accounts

    from . import BatchesOptions

log = logging.getLogger("tollway.batches")

#: ``call.state``: (batch id, line number) of a batch line's call.
BATCH_LINE: StateKey[tuple[str, int]] = StateKey("batches.line")
#: ``call.state``: the line's answer is stored (set by the settle hook).
STORED: StateKey[bool] = StateKey("batches.stored")
CHUNK = 64
CLAIM = "batches"  # the store's claim of the instance that runs the batches
COMPLETION_WINDOW = 24 * 3600  # seconds: "24h", the only window offered


async def store_answer(gateway: Gateway, call: Call, charged: bool = True) -> bool:
    """Write a line's answer (success or error) and its cost; the line is then done. True
    when this call stored it; False when another run of the line stored its answer first
    (the instance that ran the batches before or after this one, around a change of
    holder): that answer is the line's, and only its run is charged."""
    batch_id, line = call.state[BATCH_LINE]
    status = call.response.status
    body = call.response.body or b""
    code = message = None
    if status != 200:
        err = call.response.error
        code, message = (err.code, err.message) if err is not None else ("error", f"status {status}")
    cost = (call.billing.cost_micro or 0) if status == 200 and charged else 0
    usage = call.billing.usage or NO_USAGE  # (what its ledger row says; a recovered charge's row too)
    stored = await gateway.store.fetchall(
        "update tollway_batch_lines set status = ?, status_code = ?, response = ?, error_code = ?, "
        "error_message = ?, cost_micro_usd = ?, prompt_tokens = ?, completion_tokens = ?, cached_tokens = ?, "
        "reasoning_tokens = ?, estimated = ? where batch_id = ? and line = ? and status = 'pending' "
        "returning line",
        ("done" if status == 200 else "failed", status, body.decode("utf-8", "replace"), code, message,
         cost, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens,
         1 if call.billing.usage_estimated else 0, batch_id, line))
    call.state[STORED] = True
    return bool(stored)


def forgo_charge(call: Call, accounts: Accounts | None) -> None:
    """A run of a line whose answer another run stored first (``store_answer`` said
    False), before the quotas and ledger plugins settle it: its hold goes back (credit and
    budgets) and it writes no ledger row (the row's id is the line's: the stored run's row is
    the line's). The upstream answered it all the same: the operator's loss, logged."""
    batch_id, line = call.state[BATCH_LINE]
    hold = call.state.get(RESERVATION)
    if hold is not None and hold.open and accounts is not None:
        hold.open = False  # (quotas' settle and finish leave a closed hold alone)
        accounts.release(hold.account, hold.amount, hold.hold)
        if hold.budget is not None and accounts.budgets is not None:
            accounts.budgets.release(hold.budget)
    call.state.pop(FINISH_DUE, None)
    call.state[RECORDED] = True  # (the ledger plugin's mark: this call's row is written, or not to be)
    throttled(log, logging.WARNING, "batch_line_twice",
              "batches: line %d of %s ran twice (its instance lost the claim while it was upstream, and the next "
              "holder ran it again); the answer stored first is kept and charged, this one dropped (its upstream "
              "call is not charged to anyone)", line, batch_id)


class Runner:
    def __init__(self, gateway: Gateway, accounts: Accounts | None, options: BatchesOptions) -> None:
        self.gateway = gateway
        self.accounts = accounts
        self.options = options
        self.wake = asyncio.Event()
        self.running = 0  # batch lines in flight (counted in gateway.inflight too)
        self.leading = False  # this instance holds the claim: it runs the batches

    async def lead(self) -> bool:
        """Whether this instance runs the batches (it holds the store's claim, or takes it now).
        Taking it, it first charges what the holder before it answered but never charged."""
        if self.leading:
            return await self.holds()  # (lost: the next poll tries to take it again)
        store = self.gateway.store
        # (A store only one server may use, SQLite's, is this instance's already.)
        if store.shared and await store.claim(CLAIM) is not None:
            return False  # another instance runs them
        await self.recover()
        self.leading = True
        return True

    async def holds(self) -> bool:
        """Whether this instance still holds the claim (asked before each line): its
        PostgreSQL session may have ended under it (a restart, a cut connection), the claim
        then gone to another instance, which runs the lines from now on; this one stops
        (the next step tries to take the claim again)."""
        if not self.leading:
            return False
        if not self.gateway.store.shared or await self.gateway.store.holds(CLAIM):
            return True
        if self.leading:
            self.leading = False
            log.error("batches: this instance lost the store's claim %r (its PostgreSQL session ended); it stops "
                      "running batch lines and tries to take the claim again at each poll", CLAIM)
        return False

    async def run(self) -> None:
        while True:
            try:
                worked = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                throttled(log, logging.ERROR, "batch_step", "a batch step failed; retrying", exc_info=True)
                worked = False
            if not worked:
                self.wake.clear()
                try:
                    async with asyncio.timeout(self.options.poll_seconds):
                        await self.wake.wait()
                except TimeoutError:
                    pass

    async def step(self) -> bool:
        if not await self.lead():
            return False
        store = self.gateway.store
        row = await store.fetchone("select id, key_id, endpoint, status, created_at from tollway_batches "
                                   "where status in ('in_progress', 'cancelling') order by created_at limit 1")
        if row is None:
            return False
        batch_id, key_id, endpoint, status, created_at = row
        now = time.time()
        if status == "in_progress" and now > created_at + COMPLETION_WINDOW:  # its 24 hours are over
            async with store.transaction() as tx:
                await tx.execute("update tollway_batch_lines set status = 'failed', error_code = 'batch_expired', "
                                 "error_message = 'the batch''s 24h completion window ended before this line ran', "
                                 "charged = 1 where batch_id = ? and status = 'pending'", (batch_id,))
                await tx.execute("update tollway_batches set status = 'expired', completed_at = ? where id = ?",
                                 (now, batch_id))
            return True
        if status == "cancelling":
            await store.execute("update tollway_batches set status = 'cancelled', cancelled_at = ? where id = ?",
                                (now, batch_id))
            return True
        lines = await store.fetchall("select line, body from tollway_batch_lines where batch_id = ? and "
                                     "status = 'pending' order by line limit ?", (batch_id, CHUNK))
        if not lines:
            await store.execute("update tollway_batches set status = 'completed', completed_at = ? where id = ? "
                                "and status = 'in_progress'", (now, batch_id))
            return True
        key = self.accounts.by_id.get(key_id) if self.accounts is not None and key_id else None
        if self.accounts is not None and key_id and (key is None or key.status(now) != "active"):
            await store.execute("update tollway_batch_lines set status = 'failed', status_code = 401, "
                                "error_code = 'key_inactive', error_message = 'the batch''s API key is no longer "
                                "active' where batch_id = ? and status = 'pending'", (batch_id,))
            return True
        slots = asyncio.Semaphore(self.options.concurrency)

        async def one(line: int, body: str) -> None:
            async with slots:
                # A cancel stops the lines that have not started (those running finish, and are billed).
                row = await store.fetchone("select status from tollway_batches where id = ?", (batch_id,))
                if row is None or row[0] != "in_progress" or not await self.holds():
                    return
                await self.run_line(batch_id, key, endpoint, line, body)

        await asyncio.gather(*(one(line, body) for line, body in lines))
        return True

    async def run_line(self, batch_id: str, key: Any, endpoint: str, line: int, body: str) -> None:
        from proxy import run_detached

        gateway = self.gateway
        # Interactive calls first: wait while more of them are in flight than the options allow.
        while len(gateway.inflight.calls) - self.running >= self.options.interactive_priority:
            await asyncio.sleep(0.05)
        kind, dialect = ENDPOINTS[endpoint]
        raw = body.encode()
        request_body = orjson.loads(raw)
        call = Call(None, kind, request_body, raw, dialect)
        call.principal = key
        call.state[BATCH_LINE] = (batch_id, line)
        call.state[LEDGER_ID] = ledger_id(batch_id, line)
        self.running += 1
        try:
            status, _ = await run_detached(gateway, call)
        finally:
            self.running -= 1
        if status == 429:  # not an answer: the line runs again after the limit's Retry-After
            err = call.response.error
            retry = err.headers.get("Retry-After", "1") if err is not None else "1"
            await asyncio.sleep(min(float(retry) if retry.isdigit() else 1.0, 30.0))
            return
        if not call.state.get(STORED):  # refused before it was admitted (settle did not run): nothing charged
            await store_answer(gateway, call, charged=False)

    async def recover(self) -> int:
        """Charge the lines whose answer was stored but whose charge was lost in a crash
        (``recovery.py``); returns how many were charged now."""
        return await recover(self.gateway, self.accounts)
