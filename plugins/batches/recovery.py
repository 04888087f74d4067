"""Charging the batch lines whose answer is stored but whose charge was lost (a crash
between the two), when an instance starts running the batches (at start, or taking over
from an instance that ended or lost the store's claim).

A line is stored ``done`` or ``failed`` before its charge (``runner.py``) and stays
``charged = 0`` until a recovery looked at it. Its charge may then be:

- in the store: a ledger row with the line's id (``batch-<batch>-<line>``);
- on its way there. This instance's own: rows queued in its writer, charges it sends to
  Redis behind or keeps while Redis is down, all made to land (or looked at) first. With
  shared counters (Redis), any instance's: the charge is in Redis's balance and its row in
  the ledger stream until a writer stores it, in one transaction, and then deletes it from
  the stream. So the stream is read before the store: a row a writer moves meanwhile is in
  one or the other (read the other way round, it could be in neither, and charged again);
- nowhere: charged now, once. With shared counters through Redis (the ``SETTLE`` script,
  as a request is, with its row in the stream), so that Redis, what the fleet may spend,
  pays it too, not only the store. And counted in the key's and its account's budgets, as
  a request's charge is (``budget_totals``): a budget whose period total was made before
  the recovery (by a request, or seeded from the store before the row was there) did not
  see it, and let the key spend it again.

The recovered row has the line's tokens (stored with its answer; a line stored before they
were, the answer's ``usage``), so ``/v1/usage`` and the dashboard count them as well as
the money. A line whose key this instance does not know (made on another instance since
this one read the keys: read again; or its row deleted from the store) is charged all the
same: the upstream answered it, and the batch's account owes it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import orjson

from proxy import ProxyError
from proxy.logs import throttled

from ..accounts.budgets import BudgetHold
from ..accounts.claims import Admission, TotalClaim
from .lines import ENDPOINTS

if TYPE_CHECKING:
    from plugins.accounts import Account, Accounts, KeyRecord
    from plugins.accounts.redis_credit import SharedCredit
    from proxy import Gateway

log = logging.getLogger("tollway.batches")

STREAM_PAGE = 1000  # stream entries read at a time


def ledger_id(batch_id: str, line: int) -> str:
    return f"batch-{batch_id}-{line}"


async def streamed_ids(shared: SharedCredit) -> set[str]:
    """The ids of the batch lines' rows in the shared ledger stream (charged in Redis,
    not yet stored). Read whole, a page at a time: only at a recovery."""
    redis, link = shared.link.redis, shared.link
    found: set[str] = set()
    start = "-"
    while True:
        page = await link.call(lambda s=start: redis.xrange(shared.stream, s, "+", count=STREAM_PAGE))
        for _entry_id, fields in page:
            data = fields.get(b"row") if fields else None
            if data and data.startswith(b'["batch-'):
                found.add(orjson.loads(data)[0])
        if len(page) < STREAM_PAGE:
            return found
        start = "(" + page[-1][0].decode()


async def landed(accounts: Accounts) -> set[str]:
    """Make this instance's own charges land (its writer's queue in the store, the Redis
    scripts it sent behind answered); returns the ids of the rows of charges it still keeps
    (Redis down: sent when it is back)."""
    await accounts.settles_done()
    await accounts.writer.flush()
    return {row[0] for *_, row in accounts.pending_settles if row is not None}


async def budget_totals(accounts: Accounts, key: KeyRecord, acc: Account) -> BudgetHold | None:
    """The budgets a recovered charge counts in (None: none applies), each period's total
    made to exist first: a total nobody held yet this period is seeded from the store (what
    the ledger says was spent), which must not have the recovered row yet, so this runs
    before the charge (as a request's hold comes before its charge). Each total on its own,
    holding nothing: the line was answered, so its charge counts even past a cap (a total
    over its cap refuses the hold, and exists all the same)."""
    budgets = accounts.budgets
    if budgets is None:
        return None
    admission = Admission()
    if budgets.claim(key, acc, 0, admission) is None:
        return None
    totals = [claim for claim in admission.claims if isinstance(claim, TotalClaim)]
    for claim in totals:
        one = Admission()
        one.add(claim)
        try:
            await budgets.counters.admit(one)
        except ProxyError:  # (Redis down: a total it lacks is seeded from the store later, row and all)
            throttled(log, logging.WARNING, "batch_recovery_budget", "batches: a budget total could not be read "
                      "for a recovered charge; it counts once the store has its ledger row", exc_info=True)
    return BudgetHold(tuple(claim.name for claim in totals), 0)


def line_usage(stored: list) -> tuple[int, int, int, int, int]:
    """(prompt, completion, cached, reasoning tokens, estimated) of a line's row: its token
    columns, or for a line stored before it had them (NULL), its answer's ``usage`` (Chat
    Completions, completions and embeddings name them as OpenAI does, Responses its own way)."""
    prompt, completion, cached, reasoning, estimated, response = stored
    if prompt is not None:
        return int(prompt), int(completion or 0), int(cached or 0), int(reasoning or 0), int(estimated or 0)
    try:
        usage = orjson.loads(response).get("usage") if response else None
    except (orjson.JSONDecodeError, AttributeError):
        usage = None
    if not isinstance(usage, dict):
        return 0, 0, 0, 0, 0

    def count(*path: str) -> int:
        value: object = usage
        for name in path:
            value = value.get(name) if isinstance(value, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    if "input_tokens" in usage:  # Responses
        return (count("input_tokens"), count("output_tokens"), count("input_tokens_details", "cached_tokens"),
                count("output_tokens_details", "reasoning_tokens"), 0)
    return (count("prompt_tokens"), count("completion_tokens"), count("prompt_tokens_details", "cached_tokens"),
            count("completion_tokens_details", "reasoning_tokens"), 0)


def gone_key(key_id: str, account_id: str) -> KeyRecord:
    """What stands for a key that is not in the store any more: its id (the ledger row's
    ``key_id``), its account (which pays), no budgets of its own (its account's apply)."""
    from plugins.accounts.model import KeyRecord, Limits

    return KeyRecord(id=key_id, name=key_id, hash="", prefix="", account_id=account_id, models=None,
                     limits=Limits(), expires_at=None, disabled=True, metadata={}, source="api", created_at=0.0,
                     revoked_at=0.0)


async def recover(gateway: Gateway, accounts: Accounts | None) -> int:
    """Charge the lines answered and never charged; returns how many were charged now."""
    store = gateway.store
    rows = await store.fetchall(
        "select l.batch_id, l.line, l.cost_micro_usd, l.status_code, b.key_id, b.endpoint, l.body, b.account_id, "
        "l.prompt_tokens, l.completion_tokens, l.cached_tokens, l.reasoning_tokens, l.estimated, l.response "
        "from tollway_batch_lines l join tollway_batches b on b.id = l.batch_id "
        "where l.charged = 0 and l.status in ('done', 'failed')")
    if not rows:
        return 0
    recovered = 0
    if accounts is not None:
        from plugins.accounts.db import LedgerRow

        charged = await landed(accounts)
        shared = accounts.shared
        if shared is not None and any(r[2] for r in rows):
            charged |= await streamed_ids(shared)  # (before the store: see the module's docstring)
        reread = False
        for batch_id, line, cost, status, key_id, endpoint, body, account_id, *usage in rows:
            lid = ledger_id(batch_id, line)
            if not cost or lid in charged or await store.fetchone("select 1 from tollway_ledger where id = ?",
                                                                   (lid,)):
                continue
            if key_id is None:
                continue  # (a batch made without a key: a gateway that charges nobody)
            key = accounts.by_id.get(key_id)
            if key is None and not reread:
                await accounts.reload()  # (a key made on another instance since this one read them)
                reread = True
                key = accounts.by_id.get(key_id)
            if key is None:
                if account_id is None or account_id not in accounts.accounts:
                    log.error("batches: line %d of %s was answered and never charged (%d micro-units), but its "
                              "key %s and account %s are not in the store: nobody is charged for it", line,
                              batch_id, cost, key_id, account_id)
                    continue
                key = gone_key(key_id, account_id)
            acc = accounts.account_of(key)
            budget = await budget_totals(accounts, key, acc)
            now = time.time()
            model = orjson.loads(body).get("model", "") if body else ""
            prompt, completion, cached, reasoning, estimated = line_usage(usage)
            row = LedgerRow(
                id=lid, time=now, day=time.strftime("%Y-%m-%d", time.gmtime(now)), key_id=key.id,
                account_id=key.account_id, endpoint=ENDPOINTS[endpoint][0], model=model, served_model=model,
                provider=None, status=status or 200, error_code="batch_recovered", stream=0, cache_hit=0,
                client_gone=0, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
                reasoning_tokens=reasoning, cost_micro_usd=cost, latency_ms=0.0, ttfb_ms=None, estimated=estimated)
            if shared is not None and not acc.unlimited:
                # No hold. The script's done marker is the row's id, the line's: a retry, or the charge of
                # a holder before this one that stored the answer and reaches Redis only now, changes nothing.
                charged_now = await accounts.settle_shared(acc, f"{lid}|0", 0, cost, row)
            else:
                charged_now = accounts.settle(acc, 0, cost)
                accounts.writer.append(row._replace(cost_micro_usd=charged_now))
            if budget is not None and accounts.budgets is not None:
                accounts.budgets.settle(budget, charged_now)
            recovered += 1
        await accounts.writer.flush()
    async with store.transaction() as tx:
        await tx.executemany("update tollway_batch_lines set charged = 1 where batch_id = ? and line = ?",
                             [(r[0], r[1]) for r in rows])
    return recovered
