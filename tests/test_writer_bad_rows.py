"""One ledger row the store cannot take never stalls a writer.

A batch whose commit raised was retried whole, for ever: one row that can never be stored
stopped every row and balance change queued after it (and, at ``max_queue_rows``, every
request). Two such rows, through the real server:

- a row holding a NUL character (``"ec\\u0000ho"`` as its model), which PostgreSQL's text cannot
  hold (a client's model with one is refused at validation now; a plugin's row could hold one);
- a row whose id is stored already (the same request id queued twice: a batch line's charge
  recovered while the first was on its way, ``plugins/batches/runner.py``).

Now the retry leaves such a row out, logged once, whole, and stores the rest. On the shared
ledger stream (Redis) an entry whose row the store refuses is stored as its charge alone.
"""

from __future__ import annotations

import logging
import time

import aiohttp
import asyncpg
import pytest
from business import DEMO, biz_config, chat
from fleet import redis_url, until
from stores import ENGINES, PG, fresh_database

from plugins.accounts import ACCOUNTS
from plugins.accounts.db import LedgerRow

ACCOUNT = "cfg_demo"


async def flushed(writer, attempts: int = 3) -> None:
    """Flush until a flush succeeds (the first may fail on the bad row: the retry must not)."""
    for i in range(attempts):
        try:
            await writer.flush()
            return
        except Exception:
            if i == attempts - 1:
                raise


async def stored(running) -> tuple[list[str], int]:
    rows = await running.gw.store.fetchall("select model from tollway_ledger order by time")
    balance = await running.gw.store.fetchall("select balance_micro_usd from tollway_accounts where id = ?",
                                              (ACCOUNT,))
    return [r[0] for r in rows], int(balance[0][0])


async def nul_row_then_paid(running) -> int:
    """A ledger row PostgreSQL refuses queued (a NUL in the model asked, as a refused request's row
    held before such a model was refused at validation), then a paid request; the paid one's cost
    in micro-USD."""
    now = time.time()
    running.gw.services[ACCOUNTS].writer.append(LedgerRow(
        "nul-row-1", now, time.strftime("%Y-%m-%d", time.gmtime(now)), ACCOUNT, ACCOUNT, "chat", "ec\u0000ho",
        None, None, 404, "model_not_found", 0, 0, 0, 0, 0, 0, 0, 0, 1.0, None))
    async with aiohttp.ClientSession() as s:
        status, headers, body = await chat(s, running, DEMO, max_tokens=5)
        assert status == 200, body
        return round(float(headers["x-tollway-cost"]) * 1e6)


async def test_a_model_name_postgresql_cannot_store_does_not_stall_the_writer(tmp_path, start_gateway, caplog):
    async with fresh_database("postgres", tmp_path) as url:
        config = biz_config(ledger={"flush_ms": 60_000})
        config["storage"] = {"url": url}
        running = await start_gateway(config)
        writer = running.gw.services[ACCOUNTS].writer
        cost = await nul_row_then_paid(running)
        with caplog.at_level(logging.ERROR, logger="tollway.accounts"):
            await flushed(writer)
            async with aiohttp.ClientSession() as s:  # and the writer goes on
                assert (await chat(s, running, DEMO, max_tokens=5))[0] == 200
            await flushed(writer, 1)
        models, balance = await stored(running)
        assert models == ["echo", "echo"] and writer.failed is None
        assert cost > 0 and balance < 5_000_000 - cost
        said = [r.getMessage() for r in caplog.records if "refuses ledger row" in r.getMessage()]
        assert len(said) == 1 and "ec\\x00ho" in said[0]


@pytest.mark.parametrize("kind", ENGINES)
async def test_a_row_whose_id_is_stored_already_does_not_stall_the_writer(tmp_path, start_gateway, caplog, kind):
    async with fresh_database(kind, tmp_path) as url:
        config = biz_config(ledger={"flush_ms": 60_000})
        config["storage"] = {"url": url}
        running = await start_gateway(config)
        writer = running.gw.services[ACCOUNTS].writer
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, running, DEMO, max_tokens=5))[0] == 200
            await flushed(writer, 1)
            first = await running.gw.store.fetchall("select * from tollway_ledger")
            assert len(first) == 1
            writer.append(LedgerRow(*first[0])._replace(model="again"))  # the same id, queued again
            assert (await chat(s, running, DEMO, max_tokens=5))[0] == 200
        with caplog.at_level(logging.ERROR, logger="tollway.accounts"):
            await flushed(writer)
        models, _ = await stored(running)
        assert models == ["echo", "echo"] and writer.failed is None
        said = [r.getMessage() for r in caplog.records if "is stored already" in r.getMessage()]
        assert len(said) == 1 and first[0][0] in said[0]


async def test_a_stream_entry_whose_row_postgresql_refuses_is_stored_as_its_charge(tmp_path, start_gateway, caplog):
    async with fresh_database("postgres", tmp_path) as url:
        config = biz_config(ledger={"flush_ms": 60_000})
        config["storage"] = {"url": url, "counters": redis_url()}
        running = await start_gateway(config)
        book = running.gw.services[ACCOUNTS]
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, running, DEMO, max_tokens=5))[0] == 200
        await book.writer.drain_shared()
        good = await running.gw.store.fetchall("select * from tollway_ledger")
        acc = book.accounts[ACCOUNT]
        hold, _, _ = await book.shared.reserve(acc, 1000)
        assert hold is not None
        bad = LedgerRow(*good[0])._replace(id="bad-row-1", model="ec\u0000ho")
        assert await book.settle_shared(acc, hold, 1000, 700, bad) == 700
        with caplog.at_level(logging.ERROR, logger="tollway.accounts"):
            for _ in range(3):
                try:
                    await book.writer.flush_shared()
                except Exception:
                    continue
        shared = book.shared
        redis = shared.link.redis
        await until(lambda: _empty(shared), 10, "the stream stored")
        dsn, _, schema = url.partition("?search_path=")
        conn = await asyncpg.connect(PG, server_settings={"search_path": schema})
        try:
            balance = await conn.fetchval("select balance_micro_usd from tollway_accounts where id = $1", ACCOUNT)
            rows = await conn.fetchval("select count(*) from tollway_ledger")
        finally:
            await conn.close()
        assert balance == int(await redis.hget(shared.prefix + "acct:" + ACCOUNT, "bal"))
        assert rows == 1
        said = [r.getMessage() for r in caplog.records if "refuses ledger row bad-row-1" in r.getMessage()]
        assert len(said) == 1 and "charge of 700" in said[0]


async def _empty(shared) -> bool:
    redis = shared.link.redis
    return not await redis.xlen(shared.stream) and (await redis.xpending(shared.stream, "writers"))["pending"] == 0


async def test_a_stop_with_a_row_postgresql_cannot_store_queued_stores_the_rest(tmp_path, start_gateway):
    """A clean stop's last flush meets the row first: it raised, and the rows and balance
    changes queued with it were lost with the process."""
    async with fresh_database("postgres", tmp_path) as url:
        config = biz_config(ledger={"flush_ms": 60_000})
        config["storage"] = {"url": url}
        running = await start_gateway(config)
        writer = running.gw.services[ACCOUNTS].writer
        cost = await nul_row_then_paid(running)
        await writer.stop()
        models, balance = await stored(running)
        assert models == ["echo"] and balance == 5_000_000 - cost
