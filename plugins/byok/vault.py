"""The upstream keys customers brought, by owner and provider: sealed in the store, open in memory.

An owner is a key (``key:ID``) or a credit account (``account:ID``); an
account's keys serve every key of the account, and a key's own key for a
provider wins over its account's. Changes (admin API, CLI) are written in a
transaction that bumps a version row; a serving gateway polls that row
(``plugins.byok.poll_ms``) and loads the table again when it moved, so a
change made by the CLI beside a running server applies within a poll.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.schema import StartRefused
from proxy.store import Migration, Store, migrate

from .sealing import Sealer, SealError

__all__ = ["Owner", "StoredKey", "Vault", "hint_of"]

MIGRATIONS = (
    Migration(1, "upstream keys brought by keys and accounts", (
        "create table if not exists tollway_byok (owner text not null, provider text not null, "
        "sealed text not null, hint text not null, secret_id text not null, created_at double precision not null, "
        "updated_at double precision not null, primary key (owner, provider))",
        "create table if not exists tollway_byok_version (id integer primary key, version integer not null)",
        "insert into tollway_byok_version (id, version) values (1, 0) on conflict (id) do nothing",
    )),
)


@dataclass(frozen=True, slots=True)
class Owner:
    kind: str  # "key" | "account"
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What is ever shown of a stored key: never the key, only its hint."""

    owner: str
    provider: str
    hint: str
    created_at: float
    updated_at: float

    def view(self) -> dict:
        kind, _, oid = self.owner.partition(":")
        return {"owner": kind, "id": oid, "provider": self.provider, "hint": self.hint,
                "created_at": self.created_at, "updated_at": self.updated_at}


def hint_of(key: str) -> str:
    """Enough to tell two keys apart, far too little to use: its last 4 characters, ``...abcd``
    (none of a key shorter than 20)."""
    return f"...{key[-4:]}" if len(key) >= 20 else "..."


class Vault:
    def __init__(self, store: Store, sealer: Sealer) -> None:
        self.store = store
        self.sealer = sealer
        self.version = -1
        self.listed: dict[tuple[str, str], StoredKey] = {}
        # The hot path's tables: provider -> plain key, per key id and per account id.
        self.by_key: dict[str, Mapping[str, str]] = {}
        self.by_account: dict[str, Mapping[str, str]] = {}

    async def open(self) -> None:
        await migrate(self.store, "byok", MIGRATIONS)
        await self.load()

    def own_keys(self, key_id: str, account_id: str) -> Mapping[str, str] | None:
        """provider -> the caller's own upstream key (its key's, else its account's), or None."""
        mine = self.by_key.get(key_id)
        shared = self.by_account.get(account_id)
        if shared is None:
            return mine
        return shared if mine is None else {**shared, **mine}

    async def load(self) -> None:
        async with self.store.transaction() as tx:
            row = await tx.fetchone("select version from tollway_byok_version where id = 1")
            rows = await tx.fetchall("select owner, provider, sealed, hint, secret_id, created_at, updated_at "
                                     "from tollway_byok")
        by_key: dict[str, dict[str, str]] = {}
        by_account: dict[str, dict[str, str]] = {}
        listed = {}
        for owner, provider, sealed, hint, secret_id, created, updated in rows:
            if secret_id != self.sealer.fingerprint:
                raise StartRefused(f"plugins.byok: the stored upstream keys were sealed with another master secret "
                                   f"(secret {secret_id}, this one is {self.sealer.fingerprint}): start with the "
                                   "secret they were stored with")
            try:
                plain = self.sealer.open(sealed, owner, provider)
            except SealError as exc:
                raise StartRefused(f"plugins.byok: {exc} (a changed row in tollway_byok?)") from None
            kind, _, oid = owner.partition(":")
            (by_key if kind == "key" else by_account).setdefault(oid, {})[provider] = plain
            listed[(owner, provider)] = StoredKey(owner, provider, hint, created, updated)
        self.by_key, self.by_account, self.listed = dict(by_key), dict(by_account), listed
        self.version = int(row[0]) if row else 0

    async def poll(self) -> None:
        row = await self.store.fetchone("select version from tollway_byok_version where id = 1")
        if row is not None and int(row[0]) != self.version:
            await self.load()

    def keys_of(self, owner: Owner) -> list[StoredKey]:
        return sorted((k for (o, _), k in self.listed.items() if o == str(owner)), key=lambda k: k.provider)

    async def put(self, owner: Owner, provider: str, plain: str) -> StoredKey:
        """Store (or replace) ``owner``'s key for ``provider``; returns what may be shown of it."""
        now = time.time()
        who = str(owner)
        sealed = self.sealer.seal(plain, who, provider)
        async with self.store.transaction() as tx:
            await tx.execute(
                "insert into tollway_byok (owner, provider, sealed, hint, secret_id, created_at, updated_at) "
                "values (?, ?, ?, ?, ?, ?, ?) on conflict (owner, provider) do update set sealed = excluded.sealed, "
                "hint = excluded.hint, secret_id = excluded.secret_id, updated_at = excluded.updated_at",
                (who, provider, sealed, hint_of(plain), self.sealer.fingerprint, now, now))
            await tx.execute("update tollway_byok_version set version = version + 1 where id = 1")
        await self.load()
        return self.listed[(who, provider)]

    async def remove(self, owner: Owner, provider: str) -> bool:
        async with self.store.transaction() as tx:
            found = await tx.fetchone("select 1 from tollway_byok where owner = ? and provider = ?",
                                      (str(owner), provider))
            if found is None:
                return False
            await tx.execute("delete from tollway_byok where owner = ? and provider = ?", (str(owner), provider))
            await tx.execute("update tollway_byok_version set version = version + 1 where id = 1")
        await self.load()
        return True
