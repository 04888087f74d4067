"""A stall of this process does not mark the shared counters down while Redis answers.

redis-py (the counters' calls other than the scripts: the ledger stream, pub/sub notices,
the routing breakers, /health/ready's PING) times a call out by a timer. When the process is
not scheduled for longer than the timeout (a loaded machine), the reply Redis sent meanwhile
waits in the socket, and the timer, due during the stall, fires before it is read: "Timeout
reading from ...", the counters marked down, and every request answered 503
counters_unavailable until the probe reconnected, though Redis had answered. A timeout now
marks them down only if Redis is silent on the scripts' connection too (whose watchdog counts
Redis's silence alone: test_redis_pipe_stall.py). A Redis of the test's own, which a script
keeps busy so that the reply comes during the stall (the shared one serves other tests)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import hiredis
from business import biz_config, chat
from conftest import close_within
from fleet import private_redis, until
from test_redis_pipe_stall import BUSY

from plugins.accounts import ACCOUNTS
from proxy import hookimpl

KEY = "sk-counters-stall-01"
TIMEOUT = 1.0  # storage.counters ?timeout=


class Stall:
    """Before the admission of the request it is armed for: a redis-py call in flight (the
    counters' health check, as /health/ready asks it), and this process stalled for
    2.5 timeouts while Redis answers it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.healthy = None  # the counters' check (gateway.dependencies["counters"])

    @hookimpl(tryfirst=True)
    async def tollway_admit(self, call) -> None:
        if not self.armed:
            return
        self.armed = False
        busy = await busy_redis(self.port, 0.8)  # the PING below is answered after that
        await asyncio.sleep(0.1)  # (Redis has read the script: the PING comes after it)
        ping = asyncio.ensure_future(self.healthy())
        await asyncio.sleep(0.05)  # the PING is written
        time.sleep(2.5 * TIMEOUT)  # this process is not scheduled; Redis answers the PING meanwhile
        await ping  # (False: that one call failed)
        busy.close()


async def test_a_stall_of_this_process_does_not_mark_the_counters_down(tmp_path, start_gateway):
    with private_redis(tmp_path) as redis_server:
        stall = Stall(redis_server.port)
        config = biz_config(keys=[{"name": "k", "key": KEY, "credits": 5.0}])
        config["storage"] = {"url": f"sqlite:///{tmp_path}/tollway.db",
                             "counters": f"redis://127.0.0.1:{redis_server.port}/0?timeout={TIMEOUT:g}"}
        running = await start_gateway(config, plugins=[stall])
        stall.healthy = running.gw.dependencies["counters"]
        async with aiohttp.ClientSession() as s:
            await until(stall.healthy, 30, "the counters' check")  # (redis-py's pool has a connection now)
            stall.armed = True
            answers = [await chat(s, running, KEY) for _ in range(4)]  # the first one stalls
            assert [status for status, _, _ in answers] == [200] * 4, answers
            assert not running.gw.services[ACCOUNTS].shared.link.down

            # Redis's own silence still marks them down (and they come back once it answers).
            busy = await busy_redis(redis_server.port, 4 * TIMEOUT)
            await asyncio.sleep(0.2)
            assert not await stall.healthy()
            assert running.gw.services[ACCOUNTS].shared.link.down
            busy.close()
            await until(stall.healthy, 30, "the counters back once Redis answers")
        await close_within(running.server, 60)


async def busy_redis(port: int, seconds: float) -> asyncio.StreamWriter:
    """Redis kept busy for ``seconds`` from now by a script sent on a connection of the
    test's own (close it once done)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hiredis.pack_command(("EVAL", BUSY, 0, int(seconds * 1e6))))
    await writer.drain()
    return writer
