"""The ledger writer's step makes a few Redis commands per batch, not one per row.

With shared counters each metered request's ``SETTLE`` queues its ledger row in the Redis
stream; a writer takes a batch of entries (``XREADGROUP``), stores them in PostgreSQL, then
acknowledges and deletes them and lets each entry's done marker expire. That last part sent an
``EXPIRE`` per entry (with ``XACK`` and ``XDEL``) through redis-py, packed and parsed in Python:
a few microseconds of the gateway's CPU per request (``benchmarks/RESULTS.md``). Now it is one
script for the batch (``STREAM_DONE``), and the take goes through hiredis on a connection of the
writer's own. Counted on a redis-server of the test's own, through the
real server (``MONITOR``); the rows, the markers' time to live and the stream after it are checked too.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio as aioredis
from business import DEMO, biz_config, chat
from fleet import private_redis
from stores import fresh_database

from plugins.accounts import ACCOUNTS
from plugins.accounts import redis_scripts as lua

pytestmark = pytest.mark.fleet

REQUESTS = 40


class Monitor:
    """Redis's ``MONITOR`` on a connection of its own: the commands clients sent, one line each
    (those a script ran are marked ``[0 lua]``: left out)."""

    async def start(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(b"MONITOR\r\n")
        assert await self.reader.readline() == b"+OK\r\n"

    async def sent_until(self, client: aioredis.Redis, end: str) -> list[str]:
        """The commands clients sent from the start (or the last call) until ``ECHO end``."""
        await client.echo(end)
        lines = []
        while True:
            line = (await self.reader.readline()).decode()
            if f'"ECHO" "{end}"' in line:
                return lines
            if "lua]" not in line:
                lines.append(line)

    def close(self) -> None:
        self.writer.close()


async def test_storing_a_batch_of_the_ledger_stream_takes_a_few_commands_not_one_per_row(tmp_path, start_gateway):
    with private_redis(tmp_path) as server:
        client = aioredis.Redis(port=server.port)
        try:
            async with fresh_database("postgres", tmp_path) as url:
                config = biz_config(keys=[{"name": "demo", "key": DEMO, "credits": 5.0}])
                config["plugins"]["ledger"] = {"flush_ms": 600_000}  # the entries wait in the stream
                config["storage"] = {"url": url, "counters": server.url + "?prefix=wsc:"}
                running = await start_gateway(config)
                book = running.gw.services[ACCOUNTS]
                async with aiohttp.ClientSession() as s:
                    for _ in range(REQUESTS):
                        status, _, body = await chat(s, running, DEMO, max_tokens=5)
                        assert status == 200, body
                await book.settles_done()
                assert await client.xlen("wsc:ledger") == REQUESTS
                markers = [k async for k in client.scan_iter("wsc:done:*")]
                assert len(markers) == REQUESTS and await client.ttl(markers[0]) > lua.MARKER_AFTER_STORED_S
                monitor = Monitor()
                await monitor.start(server.port)
                try:
                    await monitor.sent_until(client, "before")
                    assert await book.writer.drain_shared()
                    sent = await monitor.sent_until(client, "after")
                finally:
                    monitor.close()
                commands = [line.split('"')[1].upper() for line in sent]
                assert "EXPIRE" not in commands, commands  # (one per entry before, with XACK and XDEL)
                assert len(commands) <= 20, commands  # a few per batch, whatever its size
                rows = await book.store.fetchall("select count(*) from tollway_ledger where account_id = 'cfg_demo'")
                assert rows[0][0] == REQUESTS
                assert await client.xlen("wsc:ledger") == 0
                assert (await client.xpending("wsc:ledger", "writers"))["pending"] == 0
                for key in markers:  # kept MARKER_AFTER_STORED_S from the store on (for a retried SETTLE)
                    assert 0 < await client.ttl(key) <= lua.MARKER_AFTER_STORED_S
                await running.close()  # while its Redis runs (the test's end stops it)
        finally:
            await client.aclose()
