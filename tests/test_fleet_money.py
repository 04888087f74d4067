"""Money on shared counters (Redis) and a shared store (PostgreSQL), through the real server.

Every case here runs on Redis at 127.0.0.1:6379 (its own key prefix) and a
PostgreSQL schema of its own; see ``tests/test_fleet.py`` for several real
``tollway serve`` processes."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest
from business import DEMO, biz_config, chat, credits
from fleet import redis_url
from stores import fresh_database

from plugins.accounts import ACCOUNTS

pytestmark = pytest.mark.fleet


@pytest.fixture
async def pg_url(tmp_path):
    async with fresh_database("postgres", tmp_path) as url:
        yield url


def shared_config(pg: str, credits_usd: float = 5.0, **plugin_options) -> dict:
    config = biz_config(keys=[{"name": "demo", "key": DEMO, "credits": credits_usd}], **plugin_options)
    config["storage"] = {"url": pg, "counters": redis_url()}
    return config


async def ledger_and_balance(pg: str) -> tuple[int, int, int]:
    """(ledger sum, stored balance, ledger rows) of the demo key's account."""
    dsn, _, schema = pg.partition("?search_path=")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        total, rows = await conn.fetchrow("select coalesce(sum(cost_micro_usd), 0), count(*) from tollway_ledger "
                                          "where account_id = 'cfg_demo'")
        balance = await conn.fetchval("select balance_micro_usd from tollway_accounts where id = 'cfg_demo'")
        return int(total), int(balance), int(rows)
    finally:
        await conn.close()


async def test_a_burst_cannot_overspend_and_the_ledger_is_the_money_taken(pg_url, start_gateway):
    # $0.001 = 1000 micro-USD; each request holds ~ (prompt + max_tokens 10 x 2) and costs less.
    running = await start_gateway(shared_config(pg_url, 0.001))
    told = []

    async def one(s: aiohttp.ClientSession) -> None:
        status, headers, body = await chat(s, running, DEMO, max_tokens=10, content="hello there friend")
        if status == 200:
            told.append(round(float(headers["x-tollway-cost"]) * 1e6))
        else:
            assert status == 402, body

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(one(s) for _ in range(120)))
        writer = running.gw.services[ACCOUNTS].writer
        await writer.flush()
        await writer.drain_shared()
        view = await credits(s, running, DEMO)
    total, balance, rows = await ledger_and_balance(pg_url)
    assert told and len(told) < 120
    assert balance >= 0 and total == sum(told) == 1000 - balance
    assert rows == 120  # refusals are in the ledger too, at no cost
    assert view["balance_micro_usd"] == balance


async def test_every_charge_is_the_cost_its_client_was_told(pg_url, start_gateway):
    """Within its hold a charge is sent behind the answer (nobody waits for it): each ledger
    row must still carry exactly the x-tollway-cost its client read, and the balance move by
    their sum. Prompts of different lengths tell the rows apart."""
    running = await start_gateway(shared_config(pg_url, 5.0))
    told: dict[int, int] = {}  # prompt tokens -> micro-USD the client was told

    async def one(s: aiohttp.ClientSession, words: int) -> None:
        status, headers, body = await chat(s, running, DEMO, max_tokens=5 + words % 7,
                                           content=" ".join(["money"] * words))
        assert status == 200, body
        told[body["usage"]["prompt_tokens"]] = round(float(headers["x-tollway-cost"]) * 1e6)

    async with aiohttp.ClientSession() as s:
        for words in range(1, 11):  # one at a time: each settle races the next request
            await one(s, words)
        await asyncio.gather(*(one(s, words) for words in range(11, 61)))
        writer = running.gw.services[ACCOUNTS].writer
        await writer.drain_shared()
    assert len(told) == 60 and all(told.values())
    dsn, _, schema = pg_url.partition("?search_path=")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        charged = {r["prompt_tokens"]: r["cost_micro_usd"] for r in await conn.fetch(
            "select prompt_tokens, cost_micro_usd from tollway_ledger where account_id = 'cfg_demo'")}
    finally:
        await conn.close()
    assert charged == told
    total, balance, rows = await ledger_and_balance(pg_url)
    assert rows == 60 and total == sum(told.values()) == 5_000_000 - balance


async def test_a_clean_stop_stores_the_stream_entries_its_writer_took_and_never_acknowledged(pg_url, start_gateway):
    """A shutdown cancels the writer's loop wherever it is: when that is while the stream's
    reply is on its way, Redis has given the entries to this writer (pending, in its name)
    and the writer never saw them. Its stop must store them now: with no other instance
    running, nobody would before this one's next start (another writer claims an entry only
    after ``hold_ttl`` idle). The lost reply is made here by taking entries and dropping them;
    the writer's own loop does not run meanwhile (a flush interval of a minute)."""
    running = await start_gateway(shared_config(pg_url, 5.0, ledger={"flush_ms": 60_000}))
    book = running.gw.services[ACCOUNTS]
    told = []
    async with aiohttp.ClientSession() as s:
        for words in range(1, 21):
            status, headers, body = await chat(s, running, DEMO, max_tokens=5, content=" ".join(["w"] * words))
            assert status == 200, body
            told.append(round(float(headers["x-tollway-cost"]) * 1e6))
    await book.settles_done()
    lost = await book.shared.take(1000, claim=False)  # the reply a cancelled step never read
    assert len(lost) == 20
    await book.writer.stop()
    total, balance, rows = await ledger_and_balance(pg_url)
    assert rows == 20 and total == sum(told) == 5_000_000 - balance
    redis = book.shared.link.redis
    assert await redis.xlen(book.shared.stream) == 0
    assert (await redis.xpending(book.shared.stream, "writers"))["pending"] == 0
