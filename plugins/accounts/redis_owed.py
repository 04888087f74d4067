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
- a charge whose ``SETTLE`` Redis did run (the reply was lost, not the request) has its done
  marker (kept 600 s): its amount is left out (Redis has it; its stream entry's row is found
  stored, and skipped). A charge without a ledger row is given back to the stored balance in
  the delete's transaction instead, since its stream entry stores it (``stream_charges.py``).

Not covered: a ``SETTLE`` that Redis ran but whose reply was lost, whose stream entry was not
yet stored when the stop kept it, and whose owed row is applied more than 600 s after Redis ran
it (the marker is gone): Redis charges it twice (the store once). The store down at the stop as
well: the charges are not kept (one error line with their count).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import db
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
    if not settles and not topups:
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
    del book.pending_settles[:len(settles)], book.pending_topups[:len(topups)]
    return len(settles) + len(topups)


async def apply(book: Accounts) -> bool:
    """Apply to Redis what the stops kept (see the module's doc) and delete it; whether all
    of it was (False: Redis stopped answering half-way; the rest waits for the next try)."""
    from proxy import ProxyError

    shared = book.shared
    if shared is None or shared.link.down:
        return False
    rows = await book.store.fetchall(f"select {', '.join(COLUMNS[:-1])} from tollway_redis_owed "
                                     "order by version, id")
    if not rows:
        return True
    groups: dict[tuple[str, int], list[tuple]] = {}
    for r in rows:
        groups.setdefault((r[1], int(r[3])), []).append(r)
    done: list[str] = []
    given_back: dict[str, int] = {}  # row id -> amount: charges alone whose SETTLE Redis ran
    whole = True
    try:
        for (aid, version), group in groups.items():
            for r in await _apply_one(shared, aid, version, group):
                if r[4] is None:
                    given_back[r[0]] = -int(r[2])
            done += [r[0] for r in group]
    except ProxyError:
        whole = False
    if done:
        await _forget(book, done, given_back)
        log.warning("storage.counters: %d charge(s) and top-up(s) a stop kept for Redis (it was down) are "
                    "applied to Redis's balances now", len(done))
    return whole


async def _apply_one(shared: SharedCredit, aid: str, version: int, group: list[tuple]) -> list[tuple]:
    """One account's rows of one version applied; the charges among them Redis had run."""
    marked = [r for r in group if r[5]]
    keys = [shared.prefix + "acct:" + aid, shared.prefix + "topups:" + aid,
            *(shared.prefix + "done:" + r[5] for r in marked)]
    args: list = ["", "", version, sum(int(r[2]) for r in group if not r[5]), *(int(r[2]) for r in marked)]
    reply = await shared.link.run(OWED, keys, args)
    if int(reply[0]) == -1:  # not in Redis: seeded from a fresh read (which has the change)
        args[0:2] = await shared.seed(aid)
        reply = await shared.link.run(OWED, keys, args)
    return [marked[int(i) - 1] for i in reply[1:]]


async def _forget(book: Accounts, ids: list[str], given_back: dict[str, int]) -> None:
    """Delete the applied rows; a charge alone that Redis ran goes back to the stored balance,
    once (only the transaction whose delete removed its row gives it back)."""
    async with book.lock, book.store.transaction() as tx:
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
