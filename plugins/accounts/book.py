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
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proxy.logs import throttled

from . import claims, db
from .checks import check_config, claim_currency, claim_store, config_record
from .claims import CreditClaim
from .keys import display_prefix, hash_key, new_id, new_key
from .model import NO_BUDGETS, NO_POLICY, Account, AccountPolicy, Budgets, KeyRecord, Limits
from .money import usd_to_micro
from .options import AuthOptions, LedgerOptions
from .writer import Writer

if TYPE_CHECKING:
    from proxy import Gateway

    from .budgets import BudgetKeeper
    from .redis_credit import SharedCredit
    from .redis_restore import Restorer
    from .refills import Refills


log = logging.getLogger("tollway.accounts")

#: What ``Accounts.hold`` returns for a hold kept in this process's memory (``claims.LOCAL_HOLD``).
LOCAL_HOLD = claims.LOCAL_HOLD
SEED_TIMEOUT_S = 5.0  # reading a balance the shared counters do not have yet (the request waits on it)


class AccountExists(ValueError):
    pass


class Accounts:
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
        self.live: dict[str, tuple[int, int]] = {}  # account id -> (bal, res) as Redis last said
        self.settling: set[asyncio.Future] = set()  # charges sent behind (settle_shared_behind)
        # Serialises what must not interleave: the writer's flush, reloads and admin changes.
        self.lock = asyncio.Lock()
        # The budget keeper (budgets.py), attached by the quotas plugin when it starts.
        self.budgets: BudgetKeeper | None = None
        self.refills: Refills | None = None  # the refill task (refills.py), likewise
        ledger = self.config.section("plugins.ledger") or LedgerOptions()
        auth = self.config.section("plugins.auth") or AuthOptions()
        self.key_format = auth.key_format
        billing = self.config.section("billing")
        self.currency: str = billing.currency if billing is not None else "USD"
        self.writer = Writer(self, ledger.flush_ms / 1000, ledger.batch_rows, auth.poll_ms / 1000)
        self.writer.max_rows = max(ledger.max_queue_rows, 1)

    @property
    def config(self):
        """The gateway's current config (a reload replaces it)."""
        return self.gateway.config

    def set_options(self, config) -> None:
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
            self.restorer = Restorer(counters, self._read_seed,  # type: ignore[arg-type]
                                     lambda: self.budgets.held if self.budgets is not None else {})
            counters.lost = self.restorer.ensure  # type: ignore[attr-defined]
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

    async def settle_shared(self, acc: Account, hold: str, reserved: int, cost: int, row) -> int:
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

    def settle_shared_behind(self, acc: Account, hold: str, reserved: int, cost: int, row) -> int:
        """``settle_shared`` for a cost within its hold (``cost <= reserved``), without waiting:
        the hold is still there and covers it, so the charge IS the cost, known now. The
        script (the charge with its row) goes with this turn's write to Redis (its reply read
        behind, no task; ``charges_written`` waits for the write, not for Redis). Sent exactly
        once (a script that must run again, NOSCRIPT or an account Redis lost, runs again the
        awaited way; its done marker makes that change nothing if it had run); shutdown waits
        for it (``settles_done``)."""
        assert self.shared is not None
        sent = self.shared.settle_sent(acc, hold, reserved, cost, row)
        if sent is None:  # no pipe, or Redis down: the awaited way (it keeps the charge until Redis is back)
            self._settle_behind(acc, hold, reserved, cost, row)
            return cost
        self.settling.add(sent)
        sent.add_done_callback(lambda done: self._settle_read(done, acc, hold, reserved, cost, row))
        return cost

    async def charges_written(self) -> None:
        """Once the charges sent behind in this turn are written to Redis's socket (the kernel
        delivers them even if this process is killed the next instant): the ledger waits for
        it before an answer's last bytes go out, so no answer is given away by a kill -9."""
        written = self.shared.link.written() if self.shared is not None else None
        if written is not None:
            await written

    def _settle_read(self, done: asyncio.Future, acc: Account, hold: str, reserved: int, cost: int, row) -> None:
        self.settling.discard(done)
        settled = None
        if not done.cancelled() and done.exception() is None:
            assert self.shared is not None
            settled = self.shared.answered(cost, done.result())
        if settled is None:  # an error Redis answered, or the connection failed: again, awaited
            self._settle_behind(acc, hold, reserved, cost, row)
        else:
            self.live[acc.id] = (settled.balance, settled.reserved)

    def _settle_behind(self, acc: Account, hold: str, reserved: int, cost: int, row) -> None:
        task = asyncio.ensure_future(self.settle_shared(acc, hold, reserved, cost, row))
        self.settling.add(task)
        task.add_done_callback(self._settle_done)

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
        """Send the charges that waited for Redis (oldest first)."""
        from proxy import ProxyError

        while self.pending_settles and self.shared is not None:
            acc, hold, reserved, cost, row = self.pending_settles[0]
            try:
                await self.shared.settle(acc, hold, reserved, cost, row)
            except ProxyError:
                return
            self.pending_settles.pop(0)

    async def current(self, acc: Account) -> Account:
        """The account as the whole fleet sees it now (with shared counters, Redis's
        balance and holds; the store's lags by the write-behind interval)."""
        if self.shared is None or acc.unlimited:
            return acc
        live = await self.shared.live(acc.id)
        if live is None:
            return acc
        balance, reserved = live
        # Charged in Redis, not stored yet: spent too.
        return replace(acc, balance=balance, reserved=reserved, spent=acc.spent + max(acc.balance - balance, 0))

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
            charge = max(min(cost, acc.balance - acc.reserved), 0)
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

    # -- changes (admin API, CLI): written through, then memory derived from the store --
    async def write(self, change, account_ids: tuple[str, ...] = ()) -> None:
        """Run ``change(tx)`` in a transaction that bumps the version and reads
        back the accounts it touched; then derive memory from what was read.
        Call with ``self.lock`` held."""
        async with self.store.transaction() as tx:
            await change(tx)
            version = await db.bump_version(tx)
            # Another process changed something since we last looked: read it all.
            everything = version != self.version + 1
            keys = await db.load_keys(tx) if everything else None
            accounts = await db.load_accounts(tx, None if everything else account_ids)
        self.version = version
        if keys is not None:
            self._set_keys(keys)
        self._absorb(accounts)

    async def create_key(self, *, name: str, credits: int | None, account: str | None = None,
                         models: list[str] | None = None, limits: Limits | None = None,
                         expires_at: float | None = None, disabled: bool = False,
                         metadata: dict[str, Any] | None = None,
                         budgets: Budgets = NO_BUDGETS, default_model: str | None = None) -> tuple[KeyRecord, str]:
        """A new key (and its account, unless it joins an existing one); the
        plain key is returned here and never again. ``credits`` is micro-USD
        (None: unmetered); joining an existing account tops it up by it."""
        fmt = self.key_format
        plain = new_key(fmt.prefix, fmt.length, fmt.alphabet)
        now = time.time()
        kid = new_id()
        record = KeyRecord(id=kid, name=name, hash=hash_key(plain), prefix=display_prefix(plain),
                           account_id=account or kid, models=None if models is None else frozenset(models),
                           limits=limits or Limits(), expires_at=expires_at, disabled=disabled,
                           metadata=metadata or {}, source="api", created_at=now, budgets=budgets,
                           default_model=default_model)

        async def change(tx) -> None:
            await db.upsert_key(tx, record)
            # A new account opens empty (unmetered when credits is None); an existing
            # one, here or made by another process, keeps its balance and its kind.
            await db.insert_account(tx, Account(record.account_id, 0, unlimited=credits is None), now)
            if credits:
                await tx.execute(db.APPLY_DELTA, (credits, 0, record.account_id))

        async with self.lock:
            await self.write(change, (record.account_id,))
            self._put(record)
        if credits:
            await self.shared_topup(record.account_id, credits)
        self._changed()
        return record, plain

    async def update_key(self, kid: str, changes: dict[str, Any]) -> KeyRecord:
        """Change some of: name, models, limits, expires_at, disabled, metadata, budgets, default_model."""
        async with self.lock:
            old = self.by_id[kid]
            if "models" in changes and changes["models"] is not None:
                changes = {**changes, "models": frozenset(changes["models"])}
            record = replace(old, **changes)

            async def change(tx) -> None:
                await db.upsert_key(tx, record)

            await self.write(change)
            self._put(record)
        if "budgets" in changes:
            await self.policy_changed()
        self._changed()
        return self.by_id[kid]

    async def revoke_key(self, kid: str) -> KeyRecord:
        """Revoked at once: the next request with this key is a 401."""
        return await self.update_key(kid, {"revoked_at": time.time()})

    async def topup(self, kid: str, micro: int) -> Account:
        async with self.lock:
            aid = self.by_id[kid].account_id

            async def change(tx) -> None:
                await db.add_credits(tx, aid, micro, time.time())

            await self.write(change, (aid,))
        await self.shared_topup(aid, micro)
        self._changed()
        return self.accounts[aid]

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

        while self.pending_topups and self.shared is not None:
            aid, micro, version, balance = self.pending_topups[0]
            try:
                await self.holds_back()  # a top-up makes an account Redis lost, without seeding it
                await self.shared.topup(aid, micro, version, balance)
            except ProxyError:
                return  # counters down: the money is stored; Redis gets it when it is back
            self.pending_topups.pop(0)

    def _changed(self) -> None:
        """Tell the other instances to read the keys and balances again (they poll too)."""
        if self.shared is not None:
            self.shared.counters.notify("keys")

    async def create_account(self, aid: str, *, credits: int | None, policy: AccountPolicy) -> Account:
        """A new account (409 when ``aid`` exists); ``credits`` micro-units, None: unmetered."""
        async with self.lock:
            if aid in self.accounts:
                raise AccountExists(aid)

            async def change(tx) -> None:
                await db.insert_account(tx, Account(aid, credits or 0, unlimited=credits is None, policy=policy),
                                        time.time())

            await self.write(change, (aid,))
        await self.policy_changed()
        self._changed()
        return self.accounts[aid]

    async def set_policy(self, aid: str, policy: AccountPolicy) -> Account:
        async with self.lock:
            acc = self.accounts[aid]

            async def change(tx) -> None:
                await db.set_policy(tx, aid, policy, acc.source)

            await self.write(change, (aid,))
        await self.policy_changed()
        self._changed()  # suspension, budgets, limits: every instance within a second, not at its next poll
        return self.accounts[aid]

    async def policy_changed(self) -> None:
        """A budget or refill was set: read the spend it counts, make the grant it owes."""
        if self.budgets is not None:
            await self.budgets.policy_changed()
        if self.refills is not None:
            await self.refills.apply_due()

    async def add_credits(self, aid: str, micro: int) -> Account:
        async with self.lock:
            async def change(tx) -> None:
                await db.add_credits(tx, aid, micro, time.time())

            await self.write(change, (aid,))
        await self.shared_topup(aid, micro)
        self._changed()
        return self.accounts[aid]

    def budget_status(self, key: KeyRecord, now: float | None = None) -> list[dict[str, Any]]:
        """The key's and its account's budgets: cap, what is left, when each resets (the dashboard)."""
        return self.budgets.status(key, now) if self.budgets is not None else []

    def _put(self, record: KeyRecord) -> None:
        old = self.by_id.get(record.id)
        if old is not None and old.hash != record.hash:
            self.by_hash.pop(old.hash, None)
        self.by_id[record.id] = record
        self.by_hash[record.hash] = record

    # -- the YAML accounts: and keys: -------------------------------------------------
    async def sync_config_accounts(self) -> None:
        """Make the store's accounts match the YAML ``accounts:`` mapping: budgets,
        limits, refill and suspension follow the YAML on every start; ``credits``
        opens the balance the first time only. An account removed from the YAML
        keeps its balance and loses its policy."""
        configured = self.config.section("accounts")
        if configured is None:
            return
        now = time.time()
        async with self.lock, self.store.transaction() as tx:
            stored = {a.id: a for a in await db.load_accounts(tx)}
            changed = False
            for aid, ac in configured.items():
                policy = AccountPolicy(budgets=ac.budgets, limits=ac.limits, refill=ac.refill,
                                       suspended=ac.suspended)
                old = stored.get(aid)
                if old is None:
                    credits = None if ac.credits is None else usd_to_micro(ac.credits)
                    await db.insert_account(tx, Account(aid, credits or 0, unlimited=credits is None,
                                                        policy=policy, source="config"), now)
                    changed = True
                elif old.policy != policy or old.source != "config" or old.unlimited != (ac.credits is None):
                    await db.set_policy(tx, aid, policy, "config", unlimited=ac.credits is None)
                    changed = True
            for gone in stored.values():
                if gone.source == "config" and gone.id not in configured:
                    await db.set_policy(tx, gone.id, NO_POLICY, "api")
                    changed = True
            if changed:
                await db.bump_version(tx)

    async def sync_config_keys(self) -> None:
        """Make the store's config keys match the YAML ``keys:`` list.

        Name, key, models, limits, expiry, disabled and metadata follow the
        YAML on every start; ``credits`` opens the account the first time
        only. A key removed from the YAML is revoked.
        """
        configured = self.config.section("keys")
        if configured is None:
            return
        records = [(i, kc, config_record(self.config, i, kc)) for i, kc in enumerate(configured)]
        now = time.time()
        async with self.lock, self.store.transaction() as tx:
            existing = {k.id: k for k in await db.load_keys(tx) if k.source == "config"}
            changed = False
            for _i, kc, record in records:
                old = existing.pop(record.id, None)
                if old is not None:
                    record.created_at = old.created_at
                credits = None if kc.credits is None else usd_to_micro(kc.credits)
                await db.insert_account(tx, Account(record.account_id, credits or 0, unlimited=credits is None), now)
                if old != record:
                    await db.upsert_key(tx, record)
                    changed = True
            for gone in existing.values():
                if gone.revoked_at is None:
                    await db.upsert_key(tx, replace(gone, revoked_at=now))
                    changed = True
            if changed:
                await db.bump_version(tx)
