"""The scripts' connection to Redis (``redis_pipe.py``) does not call Redis silent when this
process was the one that stalled.

On a loaded machine a worker may not be scheduled for seconds: the replies Redis sent
meanwhile wait in the socket, and a call queued just before the stall is written only after
it. The watchdog counted the wait from the call's queueing and could look before the socket
was read, so a worker stalled 2 s failed every call in flight ("Redis did not answer within
2s"): 503s for the admissions, the charges left waiting in the process (a stop then lost them,
see test_stop_redis_blip.py). Only Redis's own silence must fail the connection. A Redis of the
test's own (a script here keeps it busy 0.3 s; the shared one serves other tests)."""

from __future__ import annotations

import asyncio
import time

import hiredis
from fleet import private_redis

from plugins.accounts.redis_pipe import RedisPipe

# Busy for ARGV[1] microseconds of Redis's clock: a reply that comes late, though well within the timeout.
BUSY = ("local s = redis.call('TIME') local t repeat t = redis.call('TIME') "
        "until (t[1] - s[1]) * 1000000 + (t[2] - s[2]) >= tonumber(ARGV[1]) return 1")
TIMEOUT = 1.0


async def test_a_stall_of_this_process_is_not_a_silent_redis(tmp_path):
    with private_redis(tmp_path) as redis_server:
        pipe = await RedisPipe.connect({"host": "127.0.0.1", "port": redis_server.port}, TIMEOUT)
        try:
            await asyncio.sleep(TIMEOUT / 2)  # the watchdog looks every TIMEOUT / 4
            first = pipe.send(hiredis.pack_command(("PING",)))  # written at once (the connection is idle)
            second = pipe.send(hiredis.pack_command(("EVAL", BUSY, 0, 300_000)))  # written at the turn's end
            time.sleep(2.5 * TIMEOUT)  # this process is not scheduled (Redis answers the PING meanwhile)
            assert await first == b"PONG"
            assert await second == 1  # 0.3 s after it was written: not a timeout
            assert not pipe.closed
            # Redis's own silence still fails the connection, within the timeout (and a look).
            silent = pipe.send(hiredis.pack_command(("EVAL", BUSY, 0, int(3 * TIMEOUT * 1e6))))
            try:
                async with asyncio.timeout(10 * TIMEOUT):
                    await silent
                raise AssertionError("a Redis silent for 3 timeouts did not fail the call")
            except TimeoutError as exc:
                assert "did not answer" in str(exc)
            assert pipe.closed
        finally:
            pipe.close()
