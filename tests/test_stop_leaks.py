"""What a failed connect or a stop leaves behind: nothing.

- The scripts' Redis connection (``RedisPipe.connect``) gave up on a reply to AUTH (or
  SELECT) that did not come within the timeout, and left the connection open: once the reply
  came (nobody waiting for it any more, so the watchdog had nothing overdue), it stayed open
  for ever, one more at each reconnect of the probe.
- A call that failed after the counters were closed (a plugin's read during the stop) marked
  them down and started the probe, which reconnected a stopped process to Redis and kept it
  connected.
- The cache's stop cancelled its background tasks once and waited: a task that lost the
  cancel (``asyncio.wait_for`` on Python 3.11 drops one that comes as what it waits for ends)
  kept the stop waiting for ever. It cancels again until each ends (``stop_task``).
"""

from __future__ import annotations

import asyncio

import pytest
from business import biz_config
from conftest import close_within
from fleet import redis_url, until
from test_cache import cache_config

from plugins.accounts import ACCOUNTS
from plugins.accounts import redis_scripts as lua
from plugins.accounts.redis_link import RedisLink
from proxy import ProxyError


class LateRedis:
    """A server that reads a client's first command and answers ``+OK`` only when told (``answer``);
    ``ended`` is set when the client closes its connection."""

    def __init__(self) -> None:
        self.got_command = asyncio.Event()
        self.answer = asyncio.Event()
        self.ended = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1024)
            self.got_command.set()
            await self.answer.wait()
            writer.write(b"+OK\r\n")
            await writer.drain()
            while await reader.read(1024):
                pass
        except OSError:
            pass
        self.ended.set()
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_connect_whose_auth_reply_comes_late_leaves_no_connection_open():
    fake = LateRedis()
    await fake.start()
    link = RedisLink(f"redis://:secret@127.0.0.1:{fake.port}/0?timeout=2")
    try:
        with pytest.raises(TimeoutError):
            await link.connect_pipe()
        assert fake.got_command.is_set()
        fake.answer.set()  # the reply comes now: before, the connection then stayed open
        await until(fake.ended.is_set, 10, "the connection that gave up on AUTH closed")
    finally:
        fake.answer.set()
        await link.close()
        await fake.close()


async def test_a_call_that_fails_after_the_stop_starts_no_probe(tmp_path, start_gateway):
    config = biz_config()
    config["storage"] = {"url": f"sqlite:///{tmp_path}/tollway.db", "counters": redis_url()}
    running = await start_gateway(config)
    link = running.gw.services[ACCOUNTS].shared.counters.link
    await close_within(running.server, 30)
    with pytest.raises(ProxyError):  # (e.g. a plugin's read of the budgets' totals during the stop)
        await link.run(lua.READ_TOTALS, [link.prefix + "total:x"], [])
    probes = [t for t in asyncio.all_tasks() if t.get_name() == "tollway-redis-probe" and not t.done()]
    for task in probes:
        task.cancel()
    assert probes == [] and not link.down
    assert link.pipe is not None and link.pipe.closed


async def test_the_cache_stop_ends_though_a_task_lost_its_cancel(start_gateway, mock_upstream):
    running = await start_gateway(cache_config(mock_upstream.url))
    cache = running.gw.pm.get_plugin("builtin:cache")
    started = asyncio.Event()

    async def loses_the_cancel() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # (as asyncio.wait_for on Python 3.11 when what it waited for ended in that turn)
        await asyncio.sleep(3600)  # a second cancel ends it

    task = asyncio.get_running_loop().create_task(loses_the_cancel())
    cache._joining.add(task)  # stands for a bucket join whose cancel was lost
    task.add_done_callback(cache._joining.discard)
    await started.wait()
    try:
        await close_within(running.server, 30)
    finally:
        task.cancel()
    assert task.done()
