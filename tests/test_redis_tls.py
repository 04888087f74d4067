"""``storage.counters: rediss://``: the scripts' pipelined connection (``redis_pipe.py``) speaks
TLS, with the TLS settings of the URL (here: a certificate the URL checks), so requests over
TLS take the same path as over TCP: their scripts written with the turn's write, and
``written()`` done once the kernel has them (an answer's end waits for its charge's
write). A Redis of the test's own that speaks only TLS. (Before, over TLS the scripts went
through redis-py: nothing was written when an answer's end asked, and the charge was sent
in a task after it.)"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio
from fleet import private_redis

from plugins.accounts.gcra import Rule
from plugins.accounts.redis_counters import RedisCounters
from plugins.accounts.redis_link import RedisLink

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
RPM = Rule(tokens=False, label="requests per minute", scope="", limit=2, period=60.0, interval=30.0,
           state=("k", "", "rpm"), limit_text="2")


async def test_the_scripts_go_on_a_tls_pipe_over_rediss(tmp_path):
    with private_redis(tmp_path, tls=True) as server:
        link = RedisLink(server.url + "&prefix=tls:")
        counters = RedisCounters(link)
        check = redis.asyncio.from_url(server.url)
        try:
            await link.redis.ping()
            await link.connect_pipe()
            assert link.pipe is not None, "over TLS the scripts must go on the pipe"
            assert link.pipe.transport.get_extra_info("ssl_object") is not None  # TLS, checked against the CA
            now = time.time()
            assert [await counters.take((RPM,), 0, now) is None for _ in range(3)] == [True, True, False]
            assert await link.run(COUNT, ["tls:n"], [1]) == 1  # (loads the script)
            # The first goes out at once (the pipe is idle), the second with the turn's write:
            # written() is done once the kernel has it.
            first, second = link.send(COUNT, ["tls:n"], [1]), link.send(COUNT, ["tls:n"], [2])
            written = link.written()
            assert first is not None and second is not None and written is not None
            await written
            assert (await first, await second) == (2, 4)
            assert int(await check.get("tls:n")) == 4
        finally:
            await check.aclose()
            await counters.close()


async def test_a_burst_after_a_script_flush_loads_the_scripts_on_the_pipe(tmp_path):
    """Redis without the scripts (restarted, SCRIPT FLUSH) and a burst of requests: each
    NOSCRIPT loads the script on the pipe itself. (It went through redis-py's pool: a
    connection, over TLS a handshake, per request of the burst, which on a busy machine
    outlasted the timeout and answered the whole burst 503.)"""
    with private_redis(tmp_path, tls=True) as server:
        link = RedisLink(server.url + "&prefix=flush:")
        counters = RedisCounters(link)
        check = redis.asyncio.from_url(server.url)
        try:
            await link.redis.ping()
            await link.connect_pipe()
            await check.script_flush()
            clients = (await check.info("clients"))["connected_clients"]  # this one, the pipe, the ping's
            rules = tuple(Rule(tokens=False, label="rpm", scope="", limit=100, period=60.0, interval=0.6,
                               state=(f"k{i}", "", "rpm"), limit_text="100") for i in range(16))
            now = time.time()
            refusals = await asyncio.gather(*(counters.take((rule,), 0, now) for rule in rules))
            assert refusals == [None] * 16
            assert (await check.info("clients"))["connected_clients"] == clients
        finally:
            await check.aclose()
            await counters.close()
