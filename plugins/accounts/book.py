"""The accounts book: every key and credit account, in memory.

Requests read and change it without a database round trip (authentication is
a hash and a dict lookup; a reservation is integer arithmetic). Balance
changes are remembered as per-account deltas and written behind by the
``Writer``, in the same transaction as the ledger rows they belong to.

How memory and the store agree (the one rule): an account's balance in
memory is ALWAYS its stored balance plus this process's changes not written
yet (``Writer.unwritten``), recomputed from a fresh read of the stored row
(``_absorb``), never adjusted by hand after a write. A change made here
(admin API, CLI) is written through in a transaction that also reads back
the rows it touched, and memory is derived from that read. Changes made by
another process on the same store (the ``tollway keys`` CLI while the server
runs) bump a version counter in ``tollway_meta``; the writer polls it and
re-derives everything; a write that finds the counter moved by someone else
re-derives everything too. So no path applies a change twice (a reload that
already holds it plus an increment) or loses one.

``Accounts`` is made of one part per concern, each a module:

- ``book_memory.py``: the state, and memory derived from rows read (``_absorb``);
- ``book_shared.py``: the money in the shared counters (Redis holds charged,
  charges and top-ups kept while Redis is down, the fleet's balance);
- ``book_changes.py``: the changes (admin API, CLI), written through, and the
  change notices and policy follow-ups they owe;
- ``config_sync.py``: the YAML ``accounts:`` and ``keys:`` made the store's;
- here: the life cycle (open, reload, close) and the request path (hold,
  reserve, settle, release).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import claims, db
from .book_changes import AccountExists, BookChanges
from .checks import check_config, claim_currency, claim_store
from .claims import CreditClaim
from .config_sync import ConfigSync
from .keys import hash_key
from .model import Account, KeyRecord
from .options import AuthOptions, LedgerOptions
from .writer import Writer

if TYPE_CHECKING:
    from proxy import Gateway

__all__ = ["LOCAL_HOLD", "AccountExists", "Accounts"]

#: What ``Accounts.hold`` returns for a hold kept in this process's memory (``claims.LOCAL_HOLD``).
LOCAL_HOLD = claims.LOCAL_HOLD


class Accounts(ConfigSync, BookChanges):
    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        ledger = self.config.section("plugins.ledger") or LedgerOptions()
        auth = self.config.section("plugins.auth") or AuthOptions()
        self.writer = Writer(self, ledger.flush_ms / 1000, ledger.batch_rows, auth.poll_ms / 1000)
        self.writer.max_rows = max(ledger.max_queue_rows, 1)

    def set_options(self, config: Any) -> None:
        """Take the writer's timings from a reloaded config (``plugins.ledger``, ``plugins.auth``)."""
        ledger = config.section("plugins.ledger") or LedgerOptions()
        auth = config.section("plugins.auth") or AuthOptions()
        self.writer.flush_s = max(ledger.flush_ms / 1000, 0.001)
        self.writer.batch_rows = max(ledger.batch_rows, 1)
        self.writer.max_rows = max(ledger.max_queue_rows, 1)
        self.writer.poll_s = auth.poll_ms / 1000

    async def config_reloaded(self) -> None:
        """A reload swapped in a new config: its options, and its ``accounts:`` and ``keys:`` into
        the store and memory (accounts first, as at start-up: a new key's account opens with the
        YAML account's credits)."""
        self.set_options(self.config)
        await self.sync_config_accounts()
        await self.sync_config_keys()
        await self.reload()

    # -- life cycle -------------------------------------------------------------------
    async def open(self) -> None:
        check_config(self.config)
        if self.config.storage.counters != "memory":
            from .counters import COUNTERS
            from .redis_credit import SharedCredit
            from .redis_restore import Restorer

            counters = await self.gateway.services.open(COUNTERS)
            self.shared = SharedCredit(counters, self._seed)  # type: ignore[arg-type]
            counters.on("keys", self.poll)
            self.restorer = Restorer(counters, self._read_seed)  # type: ignore[arg-type]
            counters.lost = self.restorer.ensure  # type: ignore[attr-defined]
            counters.life = lambda: self.restorer.known if self.restorer is not None else None  # type: ignore[attr-defined]
            await self.restorer.start()
        if self.gateway.serving and (self.shared is None or not self.store.shared):
            await claim_store(self.store)
        await db.create_tables(self.store)
        await claim_currency(self.store, self.currency)
        await self.sync_config_accounts()
        await self.sync_config_keys()
        await self.reload()
        self.writer.start()

    async def close(self) -> None:
        if self.restorer is not None:
            await self.restorer.stop()
        await self.writer.stop()

    async def reload(self) -> None:
        """Read keys and balances from the store (another process changed them)."""
        async with self.lock:
            version = await db.version(self.store)
            keys = await db.load_keys(self.store)
            accounts = await db.load_accounts(self.store)
            budgets_before = self._budgets_and_refills()
            self._set_keys(keys)
            self._absorb(accounts)
            self.version = version
        if self._budgets_and_refills() != budgets_before:
            # Set by another process (the CLI, another worker): count the spend of the current
            # periods before the new caps (as a change made here does), and make a grant now due.
            await self.policy_changed()

    def _budgets_and_refills(self) -> tuple:
        return (tuple(sorted((a.id, a.policy.budgets, a.policy.refill) for a in self.accounts.values())),
                tuple(sorted((k.id, k.budgets) for k in self.by_id.values())))

    async def poll(self) -> None:
        if await db.version(self.store) != self.version:
            await self.reload()

    # -- the hot path -----------------------------------------------------------------
    def key_for(self, key: str) -> KeyRecord | None:
        # No memo of presented keys: it would keep every active key's plain text in
        # memory for the process's life to save one SHA-256 per request. Only hashes are kept.
        return self.by_hash.get(hash_key(key))

    def account_of(self, key: KeyRecord) -> Account:
        acc = self.accounts.get(key.account_id)
        if acc is None:  # a key whose account row is missing: nothing to spend
            acc = self.accounts[key.account_id] = Account(key.account_id, 0)
        return acc

    async def hold(self, acc: Account, amount: int) -> str | None:
        """Hold ``amount`` against the balance (the request path): the hold's id, or
        None when the money is not there. Release it with ``settle`` (``settle_shared``
        for a hold that is not ``LOCAL_HOLD``) or ``release``. With shared counters a
        metered account is held in Redis (and ``acc.balance``/``reserved`` show what
        Redis said)."""
        shared = self.shared
        if shared is None or acc.unlimited:
            return LOCAL_HOLD if self.reserve(acc, amount) else None
        member, bal, res = await shared.reserve(acc, amount)
        self.live[acc.id] = (bal, res)
        return member

    async def grow(self, acc: Account, hold: str, held: int, amount: int) -> str | None:
        """Raise the hold ``hold`` of ``held`` to ``amount`` (more): its id from now on, or
        None when the account does not have the difference (the hold stays as it was)."""
        if hold == LOCAL_HOLD:
            return LOCAL_HOLD if self.reserve(acc, amount - held) else None
        assert self.shared is not None
        return await self.shared.grow(acc, hold, held, amount)

    def credit_claim(self, acc: Account, amount: int) -> CreditClaim:
        """A claim on ``amount`` of the account's balance, for a request's admission
        (``claims.py``): held in Redis for a metered account with shared counters, else
        in this process. Once taken, ``claim.hold`` is the hold's id (as ``hold`` returns)."""
        return CreditClaim(acc, amount, shared=self.shared is not None and not acc.unlimited)

    def claimed(self, claim: CreditClaim) -> None:
        """Remember what the counters said of the account (a refusal's message reads it)."""
        if claim.shared:
            self.live[claim.account.id] = (claim.balance, claim.reserved)

    def reserve(self, acc: Account, amount: int) -> bool:
        """Hold ``amount`` against the balance in this process; False when it is not there."""
        if acc.unlimited:
            return True
        if amount > acc.balance - acc.reserved:
            return False
        acc.reserved += amount
        return True

    def settle(self, acc: Account, reserved: int, cost: int) -> int:
        """Release a reservation and charge ``cost``; returns what was taken.

        The charge never exceeds what the account has (the reservation plus
        the free balance), so a balance never goes below zero; a shortfall
        (usage above the reserved worst case) is the operator's loss.
        """
        if acc.unlimited:
            charge = max(cost, 0)
        else:
            acc.reserved -= reserved
            free = acc.balance - acc.reserved
            charge = free if free < cost else cost  # max(min(cost, free), 0), without two builtin calls
            if charge < 0:
                charge = 0
            acc.balance -= charge
        acc.spent += charge
        if charge:
            d = self.dirty.get(acc.id)
            if d is None:
                self.dirty[acc.id] = [-charge if not acc.unlimited else 0, charge]
            else:
                d[0] -= charge if not acc.unlimited else 0
                d[1] += charge
        return charge

    def release(self, acc: Account, reserved: int, hold: str = LOCAL_HOLD) -> None:
        if hold != LOCAL_HOLD:
            assert self.shared is not None
            self.shared.release(acc, hold, reserved)
        elif not acc.unlimited:
            acc.reserved -= reserved
