"""An entry of the shared ledger stream that cannot be read no longer stalls the writers.

Every take that read such an entry (a row from a process of another version, an entry written
by hand) raised while turning the replies into entries: the entries read with it were
delivered to the writer and never stored (left pending, claimed ``hold_ttl`` later with the
bad one, failing again, for ever), and a stop's drain raised. Now an entry whose row cannot
be read is stored as its charge alone (the row logged whole), and one without an account and
a charge that can be read is logged whole and set aside (removed from the stream). Real Redis
(a prefix of the test's own), real PostgreSQL (a schema of its own), the gateway in-process.
"""

from __future__ import annotations

import logging

import aiohttp
import redis.asyncio as aioredis
from business import biz_config, chat
from fleet import redis_url
from stores import fresh_database

from plugins.accounts import ACCOUNTS

KEY = "sk-stream-bad-000001"
OPENING = 1_000_000


async def test_unreadable_stream_entries_are_set_aside_and_the_good_ones_stored(tmp_path, start_gateway, caplog):
    counters = redis_url()
    prefix = counters.partition("prefix=")[2]
    redis = aioredis.Redis.from_url(counters.split("?")[0])
    async with fresh_database("postgres", tmp_path) as url:
        config = biz_config(keys=[{"name": "k", "key": KEY, "credits": OPENING / 1e6}])
        # The writer reads the stream only when the test drains it: the bad entries and the
        # paid request's are read in one take.
        config["plugins"]["ledger"] = {"flush_ms": 600_000}
        config["storage"] = {"url": url, "counters": counters}
        running = await start_gateway(config)
        writer = running.gw.services[ACCOUNTS].writer
        try:
            await redis.xadd(prefix + "ledger", {"row": b'["cut', "acct": "cfg_k", "charge": "7", "unl": "0"})
            await redis.xadd(prefix + "ledger", {"row": b"", "acct": "cfg_k", "charge": "lots", "unl": "0"})
            async with aiohttp.ClientSession() as s:
                status, headers, body = await chat(s, running, KEY)
            assert status == 200, body
            told = round(float(headers["x-tollway-cost"]) * 1e6)
            with caplog.at_level(logging.ERROR, logger="tollway.accounts"):
                await writer.drain_shared()
            rows = await running.gw.store.fetchall("select cost_micro_usd from tollway_ledger")
            (balance,), = await running.gw.store.fetchall(
                "select balance_micro_usd from tollway_accounts where id = 'cfg_k'")
            left = await redis.xlen(prefix + "ledger")
            pending = (await redis.xpending(prefix + "ledger", "writers"))["pending"]
        finally:
            await redis.aclose()
        assert [r[0] for r in rows] == [told] and told > 0
        assert balance == OPENING - told - 7  # the unreadable row's charge, stored alone
        assert (left, pending) == (0, 0)  # nothing left for a writer to stall on
        said = caplog.text
        assert "is stored alone, the row is left out, here whole: b'[\"cut'" in said, said
        assert "set aside (removed from the stream), here whole" in said and "lots" in said, said
