"""What Redis was owed when a process stopped: charges and top-ups it never got, kept in the store.

A charge whose answer went out while Redis was down waits in its process
(``Accounts.pending_settles``), and so does a top-up stored while Redis was down
(``pending_topups``, which also carries the negative top-ups of ``writer_stream.py``). A stop
waits ``SharedCredit.back_s`` for Redis; what Redis still has not got then is kept (``keep``),
in ONE transaction on the store: each charge's ledger row (its cost the charge, as the stream
would have stored it) and its balance change, the store's version bumped (to ``v``), and a row
of ``tollway_redis_owed`` per charge (``-charge`` at ``v``) and per top-up (its amount at its
own version). So the ledger and the stored balance have what the clients were told at once;
only Redis's balance is behind, by the owed rows.

Any instance whose counters answer applies them (``apply``, the writer's poll; at start and
whenever the store's version moved): per account and version, one ``OWED`` script, then the
rows are deleted. Each applied once:

- an account seeded in Redis from a read of the store at or after ``v`` (Redis lost its data and
  the account was seeded again) has the change already: skipped. An account Redis does not
  have is seeded by the script itself (a fresh read, at or after ``v``), so a seed that read the
  store before ``v`` cannot come after (it finds the account there);
- the applied set (``topups:<account>``, shared with ``TOPUP``: one member per version, kept a
  day after its last change): rows whose delete failed (the store went away) are not applied
  again when they are retried, and neither is a top-up whose own ``TOPUP`` ran (its reply lost);
- a charge whose ``SETTLE`` Redis did run (the reply was lost, not the request) is in Redis
  once, however late its owed row is applied, by one of two ways, whichever comes first. The
  writer that stores its stream entry deletes its owed row in the same transaction
  (``resolve``, by done marker: Redis has the charge, and the store has it from the stop, so
  the entry adds nothing). Or the apply finds its done marker: ``SETTLE`` keeps it until a
  writer has stored the entry (then ``MARKER_AFTER_STORED_S`` more, for a retried script), and
  the apply holds the owed rows locked (``for update``) from its read through the script to
  their delete, so a writer resolving one of them commits, and lets its marker expire, only
  after. So the marker is there whenever the row is: no window of time. Its amount is then
  left out; a charge without a ledger row is given back to the stored balance in the delete's
  transaction, since its stream entry charges the store when a writer stores it
  (``stream_charges.py``).

Budget settles Redis missed are kept in the same transaction and applied first
(``redis_owed_totals.py``).

Not covered: a stream entry no writer stored for ``MARKER_BACKSTOP_S`` (7 days: the marker's own
time to live, so that the markers of entries an older writer stored do not stay for ever),
whose owed row is applied after that: Redis charges it twice (the store once). A charge alone
(no ledger row) whose stop kept it while a writer's transaction was storing its entry, the
stop's commit landing between that transaction's delete and its commit: the store charges it
twice until an apply finds the owed row with the marker still in Redis and gives the stop's
charge back (``_forget``); the writer's own instance applies at its next poll, the stop having
moved the store's version, so twice for good only if no instance's counters answer for
``MARKER_AFTER_STORED_S`` after that store. (A charge with its row is kept once whichever
commits first: both write the row's id, the one that loses fails on it and tries again, the
stop's keep finding the row stored, the writer leaving it out and resolving the owed row;
``tests/test_redis_owed_race.py`` holds each order with PostgreSQL locks.) The store down at
the stop as well: the charges are not kept (one error line with their count).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import db
from . import redis_owed_totals as owed_totals
from .redis_credit import done_marker

if TYPE_CHECKING:
    from .book import Accounts
    from .redis_credit import SharedCredit

log = logging.getLogger("tollway.accounts")

COLUMNS = ("id", "account_id", "amount", "version", "ledger_row", "done_marker", "created_at")
COST = db.LEDGER_COLUMNS.index("cost_micro_usd")

# Apply what a stop kept for one account at one store version. KEYS: account, applied set, then
# the done markers of the charges it names. ARGV: seed balance, seed version ('' when not read:
# an account Redis does not have answers {-1}), the version, the amount of the rows without a
# marker, then one amount per marker. A charge whose marker exists was run by Redis (its
# amount is left out). Reply: {1 applied / 0 had it already, then the (1-based) markers found}.
OWED = """
local acct, applied = KEYS[1], KEYS[2]
local amount, out = tonumber(ARGV[4]), {0}
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then out[#out + 1] = i - 2 else amount = amount + tonumber(ARGV[i + 2]) end
end
if redis.call('EXISTS', acct) == 0 then
  if ARGV[1] == '' then return {-1} end
  redis.call('HSET', acct, 'bal', ARGV[1], 'res', 0, 'ver', ARGV[2])
end
local ver = tonumber(ARGV[3])
if tonumber(redis.call('HGET', acct, 'ver')) < ver and redis.call('SADD', applied, ver) == 1 then
  redis.call('EXPIRE', applied, 86400)
  if amount ~= 0 then redis.call('HINCRBY', acct, 'bal', amount) end
  out[1] = 1
end
return out
"""


async def keep(book: Accounts) -> int:
    """Store what Redis was not given (see the module's doc); how many charges and top-ups."""
    settles, topups = list(book.pending_settles), list(book.pending_topups)
    totals = list(book.shared.counters.pending_totals) if book.shared is not None else []
    if not settles and not topups and not totals:
        return 0
    now = time.time()
    async with book.lock, book.store.transaction() as tx:
        version = await db.bump_version(tx)
        stored = await db.existing_rows(tx, [row[0] for *_, row in settles if row is not None])
        rows: list[db.LedgerRow] = []
        deltas: dict[str, list[int]] = {}
        owed: list[tuple] = []
        for acc, hold, reserved, cost, row in settles:
            charge = max(min(cost, reserved), 0)  # what settle_shared said was taken
            if row is not None:
                if row[0] in stored:  # Redis ran it after all, and its stream entry is stored
                    continue
                stored.add(row[0])
                values = list(row)
                values[COST] = charge
                rows.append(db.LedgerRow(*values))
            if charge:
                d = deltas.setdefault(acc.id, [0, 0])
                d[0] -= charge
                d[1] += charge
                owed.append((f"charge:{hold}", acc.id, -charge, version, None if row is None else row[0],
                             done_marker(hold, row), now))
        owed += [(f"topup:{aid}:{ver}", aid, micro, ver, None, None, now) for aid, micro, ver, _ in topups]
        await db.write_rows(tx, rows, deltas)
        if owed:
            await tx.run_steps([(f"insert into tollway_redis_owed ({', '.join(COLUMNS)}) values "
                                 f"({', '.join('?' for _ in COLUMNS)}) on conflict (id) do nothing", owed, True)])
        if totals:
            await owed_totals.keep(tx, totals)
    del book.pending_settles[:len(settles)], book.pending_topups[:len(topups)]
    if totals:
        assert book.shared is not None
        del book.shared.counters.pending_totals[:len(totals)]
    return len(settles) + len(topups) + len(totals)


async def apply(book: Accounts) -> bool:
    """Apply to Redis what the stops kept (see the module's doc) and delete it; whether all
    of it was (False: Redis stopped answering half-way; the rest waits for the next try)."""
    from proxy import ProxyError

    shared = book.shared
    if shared is None or shared.link.down:
        return False
    try:
        totals = await owed_totals.apply(shared.counters, book.store)
    except ProxyError:
        return False
    if totals:
        log.warning("storage.counters: %d budget settle(s) a stop kept for Redis (it was down) are applied to "
                    "Redis's budget totals now", totals)
    rows = await book.store.fetchall("select id, account_id, version from tollway_redis_owed order by version, id")
    groups: dict[tuple[str, int], list[str]] = {}
    for rid, aid, version in rows:
        groups.setdefault((aid, int(version)), []).append(rid)
    done = 0
    whole = True
    try:
        for (aid, version), ids in groups.items():
            done += await _apply_group(book, shared, aid, version, ids)
    except ProxyError:
        whole = False
    if done:
        log.warning("storage.counters: %d charge(s) and top-up(s) a stop kept for Redis (it was down) are "
                    "applied to Redis's balances now", done)
    return whole


async def resolve(tx, markers: list[str]) -> set[str]:
    """In a writer's transaction storing stream entries (``writer_stream.py``): the owed charges
    of these done markers are in Redis (their SETTLE ran: these are its entries), so their rows
    are deleted, never applied; the markers of those it deleted (a charge alone among them was
    charged to the store by the stop that kept it: its entry adds nothing)."""
    found: set[str] = set()
    if tx.kind == "postgres":  # (one statement: the table is empty but for an outage's stops)
        if markers:
            found = {r[0] for r in await tx.fetchall("delete from tollway_redis_owed where done_marker = any(?) "
                                                     "returning done_marker", [markers])}
        return found
    for i in range(0, len(markers), 500):
        part = markers[i:i + 500]
        found |= {r[0] for r in await tx.fetchall(f"delete from tollway_redis_owed where done_marker in "
                                                  f"({', '.join('?' for _ in part)}) returning done_marker", part)}
    return found


async def _apply_group(book: Accounts, shared: SharedCredit, aid: str, version: int, ids: list[str]) -> int:
    """One account's rows of one version, applied to Redis and deleted in one transaction that
    holds them locked (``for update``; on SQLite, one process, ``book.lock``): a writer storing
    the stream entry of one of them (``resolve``) waits, so its done marker, kept until that
    writer's commit, is in Redis while the script looks for it. How many rows."""
    seed: list = ["", ""]
    for _ in range(2):
        async with book.lock, book.store.transaction() as tx:
            lock = " for update" if tx.kind == "postgres" else ""
            group = await tx.fetchall(f"select {', '.join(COLUMNS[:-1])} from tollway_redis_owed where id in "
                                      f"({', '.join('?' for _ in ids)}){lock}", ids)
            if not group:
                return 0
            marked = [r for r in group if r[5]]
            keys = [shared.prefix + "acct:" + aid, shared.prefix + "topups:" + aid,
                    *(shared.prefix + "done:" + r[5] for r in marked)]
            args = [*seed, version, sum(int(r[2]) for r in group if not r[5]), *(int(r[2]) for r in marked)]
            reply = await shared.link.run(OWED, keys, args)
            if int(reply[0]) != -1:
                ran = [marked[int(i) - 1] for i in reply[1:]]  # charges whose SETTLE Redis ran
                await _forget(tx, [r[0] for r in group], {r[0]: -int(r[2]) for r in ran if r[4] is None})
                return len(group)
        # Not in Redis: seeded from a fresh read (which has the change), made outside the
        # transaction (a seed waits for the writers' transactions, one of which may wait for it).
        seed = list(await shared.seed(aid))
    return 0


async def _forget(tx, ids: list[str], given_back: dict[str, int]) -> None:
    """Delete the applied rows; a charge alone that Redis ran goes back to the stored balance
    (its stream entry charges the store when a writer stores it)."""
    gone = await tx.fetchall(f"delete from tollway_redis_owed where id in ({', '.join('?' for _ in ids)}) "
                             "returning id, account_id", ids)
    deltas: dict[str, list[int]] = {}
    for rid, aid in gone:
        if rid in given_back:
            d = deltas.setdefault(aid, [0, 0])
            d[0] += given_back[rid]
            d[1] -= given_back[rid]
    if deltas:
        await db.write_rows(tx, [], deltas)
        await db.bump_version(tx)
