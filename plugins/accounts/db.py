"""The accounts' tables and the SQL that reads and writes them.

Plain SQL with ``?`` placeholders that runs on SQLite and PostgreSQL. Nothing
here runs on a request's hot path: the book loads everything at start-up and
writes behind (see ``writer.py``); admin changes write through.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

import orjson

from proxy.schema import build
from proxy.store import Migration, migrate

from . import rollup_upserts, rollups
from .grants import GRANTS_TABLE
from .model import NO_BUDGETS, NO_POLICY, Account, AccountPolicy, Budgets, KeyRecord, Limits
from .stream_charges import TABLE as STREAM_CHARGES_TABLE

# Step 1 is the schema from before migrations existed (idempotent, so old
# databases pass through it); later steps are appended, never edited.
TABLES_V1 = (
    """create table if not exists tollway_meta (
        name text primary key,
        value bigint not null)""",
    """create table if not exists tollway_accounts (
        id text primary key,
        balance_micro_usd bigint not null,
        spent_micro_usd bigint not null default 0,
        unlimited integer not null default 0,
        created_at double precision not null)""",
    """create table if not exists tollway_keys (
        id text primary key,
        name text not null,
        key_hash text not null unique,
        prefix text not null,
        account_id text not null,
        models text,
        limits text not null,
        expires_at double precision,
        disabled integer not null default 0,
        metadata text not null,
        source text not null,
        created_at double precision not null,
        revoked_at double precision)""",
    """create table if not exists tollway_ledger (
        id text primary key,
        time double precision not null,
        day text not null,
        key_id text,
        account_id text,
        endpoint text not null,
        model text not null,
        served_model text,
        provider text,
        status integer not null,
        error_code text,
        stream integer not null,
        cache_hit integer not null,
        client_gone integer not null,
        prompt_tokens integer not null,
        completion_tokens integer not null,
        cached_tokens integer not null,
        reasoning_tokens integer not null,
        cost_micro_usd bigint not null,
        latency_ms double precision not null,
        ttfb_ms double precision)""",
    "create index if not exists tollway_ledger_key_day on tollway_ledger (key_id, day)",
    "create index if not exists tollway_ledger_day on tollway_ledger (day)",
    "insert into tollway_meta (name, value) values ('version', 0) on conflict (name) do nothing",
)


async def _build_rollups(tx) -> None:
    # The ledger's columns as they were at this step (later steps add more).
    await rollups.rebuild_in(tx, LEDGER_COLUMNS[:LEDGER_COLUMNS.index("estimated") + 1])


MIGRATIONS = (
    Migration(1, "keys, accounts, ledger", TABLES_V1),
    # 1 when the tokens were counted by the gateway (the upstream never said): see pricing.py.
    Migration(2, "ledger.estimated", ("alter table tollway_ledger add column estimated integer not null default 0",)),
    # The request log pages by (time, id), for all keys or one; rollup rebuilds read in time order.
    Migration(3, "ledger time indexes; hourly and daily rollups", (
        "create index if not exists tollway_ledger_time on tollway_ledger (time, id)",
        "create index if not exists tollway_ledger_key_time on tollway_ledger (key_id, time, id)",
        *rollups.SCHEMA), run=_build_rollups),
    # Budgets (keys and accounts), accounts' shared limits, refills and suspension (JSON, see model.py).
    Migration(4, "key budgets; account policy and source", (
        "alter table tollway_keys add column budgets text",
        "alter table tollway_accounts add column policy text",
        "alter table tollway_accounts add column source text not null default 'api'")),
    # One row per refill grant: (account, period) is the key that makes a grant happen once.
    Migration(5, "refill grants", GRANTS_TABLE),
    # What a unit-priced answer delivered (images, speech, transcriptions): see plugins/accounts/units.py.
    Migration(6, "ledger units: images, characters, audio milliseconds", (
        "alter table tollway_ledger add column images integer not null default 0",
        "alter table tollway_ledger add column characters integer not null default 0",
        "alter table tollway_ledger add column audio_ms integer not null default 0")),
    # 1 when the upstream was called with the caller's own key (plugins/byok): see plugins/accounts/money.py.
    Migration(7, "ledger.byok", ("alter table tollway_ledger add column byok integer not null default 0",)),
    # Nothing reads the ledger by day any more (usage answers come from the rollups, the request
    # log and budgets read by time): two fewer indexes to keep up per row written.
    Migration(8, "drop the ledger's day indexes", (
        "drop index if exists tollway_ledger_key_day",
        "drop index if exists tollway_ledger_day")),
    # Every upstream attempt of a request (retries, fallbacks), and answers cut after they began: plugins/ledger.py.
    Migration(9, "ledger attempts, deployments tried, incomplete", (
        "alter table tollway_ledger add column attempts integer not null default 0",
        "alter table tollway_ledger add column deployments text",
        "alter table tollway_ledger add column incomplete integer not null default 0")),
    # The model a key's requests without "model" use (before server.default_model).
    Migration(10, "keys.default_model", ("alter table tollway_keys add column default_model text",)),
    # The shared ledger stream's charges without a row, each stored once: see stream_charges.py.
    Migration(11, "stream charges without a ledger row", STREAM_CHARGES_TABLE),
    # What Redis was owed when a process stopped while it was down (charges, top-ups): redis_owed.py.
    Migration(12, "charges and top-ups kept for Redis", (
        """create table if not exists tollway_redis_owed (
            id text primary key,
            account_id text not null,
            amount bigint not null,
            version bigint not null,
            ledger_row text,
            done_marker text,
            created_at double precision not null)""",)),
    # Budget settles Redis missed, kept at a stop while it was down: redis_owed_totals.py.
    Migration(13, "budget settles kept for Redis", (
        """create table if not exists tollway_redis_owed_totals (
            id text primary key,
            name text not null,
            held bigint not null,
            spent bigint not null,
            life text,
            created_at double precision not null)""",)),
)


class LedgerRow(NamedTuple):
    """One row of ``tollway_ledger``: one model request. The fields are the
    table's columns, in order (``LEDGER_COLUMNS``), and rows go to the store as
    they are (a NamedTuple is a tuple). A new column is a new field here (at
    the end, with a default if older code builds rows without it) and a
    migration above that adds it; a test checks the migrated table has
    exactly these columns."""

    id: str
    time: float  # unix seconds the request arrived
    day: str  # YYYY-MM-DD (UTC) of time, for the rollups
    key_id: str | None  # the principal's id
    account_id: str | None  # the principal's account (tenant)
    endpoint: str  # chat, embeddings, messages, responses, completions
    model: str  # as asked
    served_model: str | None  # the model that answered (a fallback's, after one)
    provider: str | None
    status: int
    error_code: str | None
    stream: int  # 0 / 1
    cache_hit: int  # 0 / 1
    client_gone: int  # 0 / 1
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_micro_usd: int  # the money taken (see plugins/ledger.py)
    latency_ms: float
    ttfb_ms: float | None
    estimated: int = 0  # 1: the tokens were counted by the gateway, the upstream never said (see pricing.py)
    images: int = 0  # images delivered (images, image_edits)
    characters: int = 0  # input characters spoken (speech)
    audio_ms: int = 0  # milliseconds of audio transcribed or translated
    byok: int = 0  # 1: sent with the caller's own upstream key (plugins/byok), billed at price.byok
    attempts: int = 0  # upstream attempts (1 + retries and fallbacks; 0: none, e.g. refused or a cache hit)
    deployments: str | None = None  # JSON list of the deployments tried, in order ("provider/upstream model")
    incomplete: int = 0  # 1: the answer began (200) and was cut (billed for what went out; error_code says why)


LEDGER_COLUMNS: tuple[str, ...] = LedgerRow._fields
#: The columns consecutive rows usually agree on while one key's traffic flows (all but the
#: id, the time, the token counts, the cost and the times): SQLite binds them once for a
#: chunk of rows that agree (``proxy/store/sqlite_rows.py``), most of a row's binding cost.
LEDGER_SHARED: tuple[str, ...] = tuple(c for c in LEDGER_COLUMNS if c not in (
    "id", "time", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_micro_usd",
    "latency_ms", "ttfb_ms"))
APPLY_DELTA = ("update tollway_accounts set balance_micro_usd = balance_micro_usd + ?, "
               "spent_micro_usd = spent_micro_usd + ? where id = ?")
KEY_COLUMNS = ("id", "name", "key_hash", "prefix", "account_id", "models", "limits", "expires_at", "disabled",
               "metadata", "source", "created_at", "revoked_at", "budgets", "default_model")


async def create_tables(store) -> None:
    """Create or upgrade the accounts' tables (see ``proxy/store/migrations.py``)."""
    await migrate(store, "accounts", MIGRATIONS)


async def version(store) -> int:
    row = await store.fetchone("select value from tollway_meta where name = 'version'")
    return int(row[0]) if row else 0


async def bump_version(tx) -> int:
    """Mark a change other processes on this store should load; the new version."""
    await tx.execute("update tollway_meta set value = value + 1 where name = 'version'")
    return await version(tx)


def key_row(k: KeyRecord) -> tuple:
    return (k.id, k.name, k.hash, k.prefix, k.account_id,
            None if k.models is None else orjson.dumps(sorted(k.models)).decode(),
            orjson.dumps(k.limits.to_dict()).decode(), k.expires_at, int(k.disabled),
            orjson.dumps(k.metadata).decode(), k.source, k.created_at, k.revoked_at,
            orjson.dumps(k.budgets.to_dict()).decode() if k.budgets.to_dict() else None, k.default_model)


def key_from_row(row: Sequence[Any]) -> KeyRecord:
    (kid, name, khash, prefix, account_id, models, limits, expires_at, disabled, metadata, source, created_at,
     revoked_at, budgets, default_model) = row
    return KeyRecord(id=kid, name=name, hash=khash, prefix=prefix, account_id=account_id,
                     models=None if models is None else frozenset(orjson.loads(models)),
                     limits=build(Limits, orjson.loads(limits), f"tollway_keys[{kid}].limits"),
                     expires_at=expires_at, disabled=bool(disabled), metadata=orjson.loads(metadata),
                     source=source, created_at=created_at, revoked_at=revoked_at,
                     budgets=build(Budgets, orjson.loads(budgets), f"tollway_keys[{kid}].budgets")
                     if budgets else NO_BUDGETS, default_model=default_model)


async def upsert_key(tx, k: KeyRecord) -> None:
    cols = ", ".join(KEY_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in KEY_COLUMNS if c not in ("id", "created_at"))
    await tx.execute(f"insert into tollway_keys ({cols}) values ({', '.join('?' for _ in KEY_COLUMNS)}) "
                     f"on conflict (id) do update set {updates}", key_row(k))


async def insert_account(tx, account: Account, now: float) -> None:
    """Create the account if it does not exist yet (an existing one keeps its balance)."""
    await tx.execute("insert into tollway_accounts (id, balance_micro_usd, spent_micro_usd, unlimited, created_at, "
                     "policy, source) values (?, ?, 0, ?, ?, ?, ?) on conflict (id) do nothing",
                     (account.id, account.balance, int(account.unlimited), now, policy_text(account.policy),
                      account.source))


async def set_policy(tx, account_id: str, policy: AccountPolicy, source: str, unlimited: bool | None = None) -> None:
    """Replace an account's policy (budgets, limits, refill, suspension) and source;
    ``unlimited`` changes its kind too when given."""
    if unlimited is None:
        await tx.execute("update tollway_accounts set policy = ?, source = ? where id = ?",
                         (policy_text(policy), source, account_id))
    else:
        await tx.execute("update tollway_accounts set policy = ?, source = ?, unlimited = ? where id = ?",
                         (policy_text(policy), source, int(unlimited), account_id))


def policy_text(policy: AccountPolicy) -> str | None:
    data = policy.to_dict()
    return orjson.dumps(data).decode() if data else None


def policy_from_text(text: str | None, account_id: str) -> AccountPolicy:
    if not text:
        return NO_POLICY
    return build(AccountPolicy, orjson.loads(text), f"tollway_accounts[{account_id}].policy")


async def load_keys(store) -> list[KeyRecord]:
    rows = await store.fetchall(f"select {', '.join(KEY_COLUMNS)} from tollway_keys order by created_at, id")
    return [key_from_row(r) for r in rows]


async def load_accounts(store, ids: Sequence[str] | None = None) -> list[Account]:
    """Every account, or those with these ids, as stored."""
    # The version in the same statement: one snapshot, so a balance and the version it
    # was read at agree (a top-up changes both in one transaction).
    sql = ("select id, balance_micro_usd, spent_micro_usd, unlimited, policy, source, "
           "(select value from tollway_meta where name = 'version') from tollway_accounts")
    if ids is not None:
        if not ids:
            return []
        sql += f" where id in ({', '.join('?' for _ in ids)})"
    rows = await store.fetchall(sql, list(ids or ()))
    return [Account(id=r[0], balance=int(r[1]), spent=int(r[2]), unlimited=bool(r[3]),
                    policy=policy_from_text(r[4], r[0]), source=r[5], version=int(r[6] or 0)) for r in rows]


async def add_credits(tx, account_id: str, micro: int, now: float) -> None:
    """Add ``micro`` to an account's stored balance (the account is made if missing)."""
    await insert_account(tx, Account(account_id, 0), now)
    await tx.execute(APPLY_DELTA, (micro, 0, account_id))


async def write_batch(tx, rows: Iterable[LedgerRow], deltas: dict[str, list[int]], marker: str, seq: int) -> None:
    """Ledger rows, the rollups they change, balance changes and the writer's batch number,
    inside the transaction ``tx``."""
    await tx.run_steps(await _batch_steps(tx, list(rows), deltas, marker, seq))


async def store_batch(store, rows: list[LedgerRow], deltas: dict[str, list[int]], marker: str, seq: int) -> None:
    """``write_batch`` in a transaction of its own (the writer's flush): on SQLite the
    whole flush is one trip to its thread."""
    await store.run_atomically(await _batch_steps(store, rows, deltas, marker, seq))


async def _batch_steps(store, rows: list[LedgerRow], deltas: dict[str, list[int]], marker: str, seq: int) -> list:
    steps = await _row_steps(store, rows, deltas)
    steps.append(("insert into tollway_meta (name, value) values (?, ?) "
                  "on conflict (name) do update set value = excluded.value", (marker, seq), False))
    return steps


async def write_rows(tx, rows: list[LedgerRow], deltas: dict[str, list[int]]) -> None:
    """Ledger rows, their rollups and balance changes (no batch number: rows taken from
    the shared ledger stream are made idempotent by ``existing_rows``)."""
    await tx.run_steps(await _row_steps(tx, rows, deltas))


async def _row_steps(tx, rows: list[LedgerRow], deltas: dict[str, list[int]]) -> list:
    steps = tx.insert_steps("tollway_ledger", LEDGER_COLUMNS, rows, LEDGER_SHARED) if rows else []
    counted = await rollup_upserts.batch_steps(LEDGER_COLUMNS, rows)
    if tx.kind == "postgres":
        # A fleet's writers add to the same rollup and account rows, each locked until its
        # commit: all lock them in one order (sorted), or each of two could hold a row the
        # other waits for (a deadlock PostgreSQL breaks after a second by failing a flush).
        for _sql, upserts, _many in counted:
            upserts.sort()  # (by their dimensions: no two rows of one step have the same)
        deltas = dict(sorted(deltas.items()))
    steps += counted
    if deltas:
        steps.append((APPLY_DELTA, [(d[0], d[1], aid) for aid, d in deltas.items()], True))
    return steps


async def existing_rows(tx, ids: Sequence[str]) -> set[str]:
    """Which of these ledger row ids are stored already."""
    found: set[str] = set()
    if tx.kind == "postgres":  # one statement whatever the count (prepared once, not once per count)
        return {r[0] for r in await tx.fetchall("select id from tollway_ledger where id = any(?)", [list(ids)])}
    for i in range(0, len(ids), 500):
        part = list(ids[i:i + 500])
        sql = f"select id from tollway_ledger where id in ({', '.join('?' for _ in part)})"
        found.update(r[0] for r in await tx.fetchall(sql, part))
    return found


async def batch_committed(store, marker: str, seq: int) -> bool:
    """Whether the writer's batch ``seq`` was committed (a commit can fail after it happened)."""
    row = await store.fetchone("select value from tollway_meta where name = ?", (marker,))
    return row is not None and int(row[0]) >= seq


async def forget_marker(store, marker: str) -> None:
    await store.execute("delete from tollway_meta where name = ?", (marker,))


async def usage_rollups(store, *, key_id: str | None = None, model: str | None = None,
                        since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """Per day, key and model: requests, errors, tokens and cost, from the daily rollups."""
    where, params = [], []
    for clause, value in (("key_id = ?", key_id), ("model = ?", model), ("bucket >= ?", _day_start(since)),
                          ("bucket <= ?", _day_start(until))):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = ("select bucket, key_id, model, sum(requests), sum(errors), sum(prompt_tokens), sum(completion_tokens), "
           f"sum(cached_tokens), sum(cost_micro_usd) from {rollups.DAY}"
           + (" where " + " and ".join(where) if where else "")
           + " group by bucket, key_id, model order by bucket, key_id, model")
    out = []
    for bucket, kid, mdl, n, errors, prompt, completion, cached, cost in await store.fetchall(sql, params):
        out.append({"day": _day_text(bucket), "key_id": kid or None, "model": mdl, "requests": int(n),
                    "errors": int(errors or 0), "prompt_tokens": int(prompt or 0),
                    "completion_tokens": int(completion or 0), "cached_tokens": int(cached or 0),
                    "cost_micro_usd": int(cost or 0)})
    return out


def _day_start(day: str | None) -> int | None:
    if day is None:
        return None
    return int(datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).timestamp())


def _day_text(bucket: int) -> str:
    return datetime.fromtimestamp(int(bucket), UTC).strftime("%Y-%m-%d")
