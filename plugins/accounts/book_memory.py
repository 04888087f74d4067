"""The accounts book's memory: every key and account as last read from the store, plus this
process's changes not written yet, and the state the book's parts share (``book.py`` says how
memory and the store agree; ``BookMemory`` is where memory is derived from what was read)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .model import Account, KeyRecord
from .options import AuthOptions

if TYPE_CHECKING:
    from proxy import Gateway

    from .budgets import BudgetKeeper
    from .redis_credit import SharedCredit
    from .redis_restore import Restorer
    from .refills import Refills
    from .writer import Writer


class BookMemory:
    """Keys by hash and id, accounts by id, the unwritten deltas, and the links to what shares
    the money (the write-behind ``Writer``, the shared counters, the budgets and refills)."""

    writer: Writer  # made by ``Accounts`` (it writes behind for the whole book)

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.by_hash: dict[str, KeyRecord] = {}
        self.by_id: dict[str, KeyRecord] = {}
        self.accounts: dict[str, Account] = {}
        # account id -> [balance delta, spent delta] not yet written.
        self.dirty: dict[str, list[int]] = {}
        self.version = 0
        # With storage.counters: redis://, metered accounts are held and charged in Redis.
        self.shared: SharedCredit | None = None
        self.restorer: Restorer | None = None  # puts this instance's holds back after Redis lost its data
        # Top-ups stored but not yet added in Redis (it was down): retried by the writer.
        self.pending_topups: list[tuple[str, int, int, int]] = []
        self.pending_settles: list[tuple] = []  # charges made while Redis was down (see settle_shared)
        # One sender of those two queues at a time (an admin top-up, the writer's pass): two
        # sending the same head would each remove an entry, one of them never sent.
        self.pushing = asyncio.Lock()
        self.live: dict[str, tuple[int, int]] = {}  # account id -> (bal, res) as Redis last said
        self.settling: set[asyncio.Future] = set()  # charges sent behind (settle_shared_behind)
        # Serialises what must not interleave: the writer's flush, reloads and admin changes.
        self.lock = asyncio.Lock()
        # The budget keeper (budgets.py), attached by the quotas plugin when it starts.
        self.budgets: BudgetKeeper | None = None
        self.refills: Refills | None = None  # the refill task (refills.py), likewise
        auth = self.config.section("plugins.auth") or AuthOptions()
        self.key_format = auth.key_format
        billing = self.config.section("billing")
        self.currency: str = billing.currency if billing is not None else "USD"

    @property
    def config(self) -> Any:
        """The gateway's current config (a reload replaces it)."""
        return self.gateway.config

    def _set_keys(self, keys: list[KeyRecord]) -> None:
        self.by_id = {k.id: k for k in keys}
        self.by_hash = {k.hash: k for k in keys}

    def _absorb(self, stored: list[Account]) -> None:
        """Memory from freshly read rows: stored + unwritten, for each of these accounts.
        Account objects are kept (reservations in flight point at them)."""
        for fresh in stored:
            acc = self.accounts.get(fresh.id)
            if acc is None:
                self.accounts[fresh.id] = acc = fresh
            dbal, dspent = self.writer.unwritten(fresh.id)
            acc.balance = fresh.balance + dbal
            acc.spent = fresh.spent + dspent
            acc.unlimited = fresh.unlimited
            acc.policy = fresh.policy
            acc.source = fresh.source
            acc.version = fresh.version

    def _put(self, record: KeyRecord) -> None:
        old = self.by_id.get(record.id)
        if old is not None and old.hash != record.hash:
            self.by_hash.pop(old.hash, None)
        self.by_id[record.id] = record
        self.by_hash[record.hash] = record

    async def budget_status(self, key: KeyRecord) -> list[dict[str, Any]]:
        """The key's and its account's budgets: cap, what the fleet spent, what is left, when
        each resets (``/v1/credits``, the admin API, the dashboard)."""
        if self.budgets is None:
            return []
        await self.budgets.read(keys=[key])
        return self.budgets.status(key)
