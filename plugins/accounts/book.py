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
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proxy.schema import ConfigError, StartRefused, suggest

from . import db
from .keys import display_prefix, hash_key, new_id, new_key
from .model import Account, KeyRecord, Limits
from .money import MoneyError, usd_to_micro
from .options import NAME_RE, AuthOptions, KeyConfig, LedgerOptions, parse_time
from .writer import Writer

if TYPE_CHECKING:
    from proxy import Gateway


class Accounts:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.store = gateway.store
        self.by_hash: dict[str, KeyRecord] = {}
        self.by_id: dict[str, KeyRecord] = {}
        self.accounts: dict[str, Account] = {}
        # account id -> [balance delta, spent delta] not yet written.
        self.dirty: dict[str, list[int]] = {}
        self.version = 0
        # Serialises what must not interleave: the writer's flush, reloads and admin changes.
        self.lock = asyncio.Lock()
        ledger = self.config.section("plugins.ledger") or LedgerOptions()
        auth = self.config.section("plugins.auth") or AuthOptions()
        self.writer = Writer(self, ledger.flush_ms / 1000, ledger.batch_rows, auth.poll_ms / 1000)

    # -- life cycle -------------------------------------------------------------------
    async def open(self) -> None:
        check_config(self.config)
        if self.gateway.serving:
            await claim_store(self.store)
        await db.create_tables(self.store)
        await self.sync_config_keys()
        await self.reload()
        self.writer.start()

    async def close(self) -> None:
        await self.writer.stop()

    async def reload(self) -> None:
        """Read keys and balances from the store (another process changed them)."""
        async with self.lock:
            version = await db.version(self.store)
            keys = await db.load_keys(self.store)
            accounts = await db.load_accounts(self.store)
            self._set_keys(keys)
            self._absorb(accounts)
            self.version = version

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

    async def hold(self, acc: Account, amount: int) -> bool:
        """Hold ``amount`` against the balance (the request path); False when it is
        not there. Release it with ``settle`` or ``release``."""
        return self.reserve(acc, amount)

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

    def release(self, acc: Account, reserved: int) -> None:
        if not acc.unlimited:
            acc.reserved -= reserved

    # -- changes (admin API, CLI): written through, then memory derived from the store --
    async def _write(self, change, account_ids: tuple[str, ...] = ()) -> None:
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
                         metadata: dict[str, Any] | None = None) -> tuple[KeyRecord, str]:
        """A new key (and its account, unless it joins an existing one); the
        plain key is returned here and never again. ``credits`` is micro-USD
        (None: unmetered); joining an existing account tops it up by it."""
        plain = new_key()
        now = time.time()
        kid = new_id()
        record = KeyRecord(id=kid, name=name, hash=hash_key(plain), prefix=display_prefix(plain),
                           account_id=account or kid, models=None if models is None else frozenset(models),
                           limits=limits or Limits(), expires_at=expires_at, disabled=disabled,
                           metadata=metadata or {}, source="api", created_at=now)

        async def change(tx) -> None:
            await db.upsert_key(tx, record)
            # A new account opens empty (unmetered when credits is None); an existing
            # one, here or made by another process, keeps its balance and its kind.
            await db.insert_account(tx, Account(record.account_id, 0, unlimited=credits is None), now)
            if credits:
                await tx.execute(db.APPLY_DELTA, (credits, 0, record.account_id))

        async with self.lock:
            await self._write(change, (record.account_id,))
            self._put(record)
        return record, plain

    async def update_key(self, kid: str, changes: dict[str, Any]) -> KeyRecord:
        """Change some of: name, models, limits, expires_at, disabled, metadata."""
        async with self.lock:
            old = self.by_id[kid]
            if "models" in changes and changes["models"] is not None:
                changes = {**changes, "models": frozenset(changes["models"])}
            record = replace(old, **changes)

            async def change(tx) -> None:
                await db.upsert_key(tx, record)

            await self._write(change)
            self._put(record)
        return self.by_id[kid]

    async def revoke_key(self, kid: str) -> KeyRecord:
        """Revoked at once: the next request with this key is a 401."""
        return await self.update_key(kid, {"revoked_at": time.time()})

    async def topup(self, kid: str, micro: int) -> Account:
        async with self.lock:
            aid = self.by_id[kid].account_id

            async def change(tx) -> None:
                await db.add_credits(tx, aid, micro, time.time())

            await self._write(change, (aid,))
            return self.accounts[aid]

    def _put(self, record: KeyRecord) -> None:
        old = self.by_id.get(record.id)
        if old is not None and old.hash != record.hash:
            self.by_hash.pop(old.hash, None)
        self.by_id[record.id] = record
        self.by_hash[record.hash] = record

    # -- the YAML keys: ---------------------------------------------------------------
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



def check_config(config) -> None:
    """What ``tollway check`` must catch: the deployment, and every YAML key."""
    check_deployment(config)
    for i, kc in enumerate(config.section("keys") or []):
        config_record(config, i, kc)


def config_record(config, i: int, kc: KeyConfig) -> KeyRecord:
    """The KeyRecord of the i-th YAML key, or a ConfigError naming what is wrong."""
    where = f"keys[{i}]"
    seen = {k.name for k in (config.section("keys") or [])[:i]}
    if not NAME_RE.match(kc.name):
        raise ConfigError(f"{where}.name: use 1-64 letters, digits, '_', '.' or '-', got {kc.name!r}")
    if kc.name in seen:
        raise ConfigError(f"{where}.name: duplicate key name {kc.name!r}")
    if not kc.key.strip():
        raise ConfigError(f"{where}.key: empty (is its ${{VAR}} set?)")
    if kc.account is not None and not NAME_RE.match(kc.account):
        raise ConfigError(f"{where}.account: use 1-64 letters, digits, '_', '.' or '-'")
    if kc.credits is not None:
        if kc.credits < 0:
            raise ConfigError(f"{where}.credits: must not be negative")
        try:
            usd_to_micro(kc.credits, f"{where}.credits")
        except MoneyError as exc:
            raise ConfigError(str(exc)) from None
    models = config.models
    for j, m in enumerate(kc.models or ()):
        if m not in models:
            raise ConfigError(f"{where}.models[{j}]: unknown model {m!r}{suggest(m, models)}")
    for m in kc.limits.models:
        if m not in models:
            raise ConfigError(f"{where}.limits.models.{m}: unknown model{suggest(m, models)}")
    for path, problem in kc.limits.problems():
        raise ConfigError(f"{where}.{path}: {problem}")
    try:
        expires = parse_time(kc.expires_at, f"{where}.expires_at")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    kid = "cfg_" + kc.name
    key = kc.key.strip()
    return KeyRecord(id=kid, name=kc.name, hash=hash_key(key), prefix=display_prefix(key),
                     account_id=kc.account or kid, models=None if kc.models is None else frozenset(kc.models),
                     limits=kc.limits, expires_at=expires, disabled=kc.disabled, metadata=dict(kc.metadata),
                     source="config", created_at=time.time())


async def claim_store(store) -> None:
    """One serving process per store: balances, reservations and rate-limit
    counters live in its memory (storage.counters: memory), so a second one
    would spend the same credits again. The claim is a lock the store holds
    (released when the process ends, a crash included); the CLI takes none."""
    holder = await store.claim("serve")
    if holder is not None:
        raise StartRefused(
            f"storage.url: another tollway serve is already running on this store ({holder}); with "
            "storage.counters: memory the balances and rate limits live in that process's memory, so a second "
            "process would spend the same credits twice. Send the traffic to the running one (tollway keys and "
            "tollway usage work beside it), stop it first, or give this one its own storage.url")


def check_deployment(config) -> None:
    """Balances, reservations and counters live in this process's memory."""
    if config.storage.counters != "memory":
        raise ConfigError(f"storage.counters: {config.storage.counters!r} is not supported by the auth, quotas "
                          "and ratelimit plugins yet; use 'memory' (one process)")
    if config.server.workers > 1:
        raise ConfigError(f"server.workers: {config.server.workers} workers cannot share the in-memory balances "
                          "and rate-limit counters of storage.counters: memory; run 1 worker")
