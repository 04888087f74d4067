"""Changes to keys and accounts (admin API, CLI, dashboard): each written through at once in a
transaction that bumps the store's version and reads back the rows it touched, memory derived
from that read (the rule in ``book.py``); then what the change owes beside the store: the
top-up added in Redis, the spend a new budget counts and the grant a refill makes now
(``policy_changed``), and the change notice that makes every other instance read the keys and
balances again at once (``_changed``). The checks before a change are the callers'
(``account_ops.py``, ``specs.py``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import db
from .book_shared import SharedMoney
from .keys import display_prefix, hash_key, new_id, new_key
from .model import NO_BUDGETS, Account, AccountPolicy, Budgets, KeyRecord, Limits

if TYPE_CHECKING:
    from proxy.store import Store


class AccountExists(ValueError):
    pass


class BookChanges(SharedMoney):
    async def write(self, change: Callable[[Store], Awaitable[None]], account_ids: tuple[str, ...] = ()) -> None:
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

        async def change(tx: Store) -> None:
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

            async def change(tx: Store) -> None:
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
        """Credits to the account of key ``kid``: read under the lock (a reload may move a YAML
        key to another account)."""
        return await self._credit(lambda: self.by_id[kid].account_id, micro)

    def _changed(self) -> None:
        """Tell the other instances to read the keys and balances again (they poll too)."""
        if self.shared is not None:
            self.shared.counters.notify("keys")

    async def create_account(self, aid: str, *, credits: int | None, policy: AccountPolicy) -> Account:
        """A new account (409 when ``aid`` exists); ``credits`` micro-units, None: unmetered."""
        async with self.lock:
            if aid in self.accounts:
                raise AccountExists(aid)

            async def change(tx: Store) -> None:
                await db.insert_account(tx, Account(aid, credits or 0, unlimited=credits is None, policy=policy),
                                        time.time())

            await self.write(change, (aid,))
        await self.policy_changed()
        self._changed()
        return self.accounts[aid]

    async def set_policy(self, aid: str, policy: AccountPolicy) -> Account:
        async with self.lock:
            acc = self.accounts[aid]

            async def change(tx: Store) -> None:
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
        return await self._credit(lambda: aid, micro)

    async def _credit(self, account_of: Callable[[], str], micro: int) -> Account:
        async with self.lock:
            aid = account_of()

            async def change(tx: Store) -> None:
                await db.add_credits(tx, aid, micro, time.time())

            await self.write(change, (aid,))
        await self.shared_topup(aid, micro)
        self._changed()
        return self.accounts[aid]
