"""The YAML's ``accounts:`` and ``keys:`` made the store's, at start-up and on every reload: what
the file says wins over the store for the parts it owns (policies, names, limits...), the
credits it names open a balance once, and what left the file is revoked (keys) or loses its
policy (accounts). Memory follows from the reload the caller does next (``Accounts.open``,
``config_reloaded``)."""

from __future__ import annotations

import time
from dataclasses import replace

from . import db
from .book_memory import BookMemory
from .checks import config_record
from .model import NO_POLICY, Account, AccountPolicy
from .money import usd_to_micro


class ConfigSync(BookMemory):
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
            left = {a.id for a in stored.values() if a.source == "config" and a.id not in configured}
            # In the accounts' order (sorted), as the ledger writers add to balances: in the
            # file's order, this and a writer could each hold a row the other waits for.
            for aid in sorted(configured.keys() | left):
                if aid in left:
                    await db.set_policy(tx, aid, NO_POLICY, "api")
                    changed = True
                    continue
                ac = configured[aid]
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
