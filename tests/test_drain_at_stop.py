"""A stop whose drain of the fleet's ledger stream meets a Redis that does not answer for a
moment stores every entry once; one that Redis leaves for longer says what it leaves.

``Writer.stop`` stores what the fleet queued in the Redis stream (``drain_shared``). A step of
that drain that failed because Redis did not answer (a timeout under load) ended it: the
entries it had taken, or had not read yet, stayed in Redis, and nothing was logged (an operator
stopping the last instance lost sight of them). Now a failed step is tried again while Redis
answers again within ``SharedCredit.back_s``; past it, one line says how many entries are left
and that the next instance stores them.

Real ``tollway serve`` processes, a redis-server of the test's own reached through a ``Gate``
(a TCP way that stops forwarding at a given command, as a Redis that went silent), a
PostgreSQL schema of its own. The writer's interval is long (``flush_ms``), so the entries of
the requests wait in the stream until the stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import aiohttp
import pytest
import yaml
from business import bearer
from fleet import TcpProxy, stop, until
from test_redis_owed import ACCOUNT, KEY, OPENING, Fleet, behind_proxy

pytestmark = pytest.mark.fleet

PREFIX = "drain:"
STREAM = PREFIX + "ledger"
REQUESTS = 5


class Gate(TcpProxy):
    """A TCP way to ``127.0.0.1:target`` that goes silent at a command (``shut_at``): what is sent
    toward Redis from then on, on every connection and new ones, is held (never forwarded, never
    answered: a Redis that stopped answering) until ``open``, which drops the connections (what
    was held is never sent) and forwards again. ``reconnects``: connections made since it shut."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.at: bytes | None = None  # the command that shuts it (its first chunk holding these bytes)
        self.through = False  # whether that chunk itself goes through
        self.shut = False
        self.connections_at_shut = 0

    @property
    def reconnects(self) -> int:
        return self.connections - self.connections_at_shut if self.shut else 0

    def shut_at(self, at: bytes, through: bool) -> None:
        self.at, self.through = at, through

    def passes(self, data: bytes, toward_target: bool) -> bool:
        if not toward_target:
            return True
        if self.shut:
            return False  # held: never sent
        if self.at is not None and self.at in data:
            self.shut, self.connections_at_shut = True, self.connections
            return self.through
        return True

    def open(self) -> None:
        self.at, self.shut = None, False
        self.drop_connections()

    async def close(self) -> None:
        self.open()
        await super().close()


@asynccontextmanager
async def gated_fleet(tmp_path) -> AsyncIterator[tuple[Fleet, Gate]]:
    async with behind_proxy(tmp_path, partial(Fleet, timeout=0.25, prefix=PREFIX), Gate) as fleet:
        fleet.config["plugins"]["ledger"] = {"flush_ms": 600_000}  # the entries wait for the stop
        fleet.path.write_text(yaml.safe_dump(fleet.config))
        yield fleet, fleet.proxy


async def paid_requests(fleet: Fleet, server) -> int:
    """``REQUESTS`` paid answers, their entries in the stream: the sum the clients were told."""
    told = 0
    async with aiohttp.ClientSession() as s:
        for i in range(REQUESTS):
            async with s.post(server.url + "/v1/chat/completions", headers=bearer(KEY),
                              json={"model": "echo", "messages": [{"role": "user", "content": f"a b c {i}"}]}) as r:
                assert r.status == 200, await r.text()
                told += round(float(r.headers["x-tollway-cost"]) * 1e6)
    assert told > 0

    async def queued() -> bool:
        return await fleet.redis.xlen(STREAM) == REQUESTS

    await until(queued, 30, "the charges' entries in the stream")
    assert (await fleet.stored())[:2] == (0, 0)  # not stored before the stop
    return told


async def redis_balance(fleet: Fleet) -> int:
    return int(await fleet.redis.hget(f"{PREFIX}acct:{ACCOUNT}", "bal"))


async def stop_in_background(server) -> asyncio.Task:
    return asyncio.ensure_future(stop(server))


async def silent_until_the_probe(gate: Gate, server) -> None:
    """Wait until the server, stopping, found Redis silent and its probe opened a connection
    to look for it again (the drain's step failed; before, the drain had ended there)."""
    await until(lambda: gate.reconnects > 0 or server.proc.poll() is not None, 60, "the link's probe")


# The drain's first step counts the stream (XLEN): silent there, nothing is taken. Or the
# stream gives this writer its entries (XREADGROUP ... >) and Redis goes silent right after:
# taken, not stored (the session's "87 pending").
MOMENTS = {"counting": (b"XLEN", False), "taken": (b"\r\n>\r\n", True)}


@pytest.mark.parametrize("moment", sorted(MOMENTS))
async def test_a_stop_whose_drain_meets_a_silent_redis_for_a_moment_stores_every_entry_once(tmp_path, moment):
    async with gated_fleet(tmp_path) as (fleet, gate):
        server = await fleet.start()
        told = await paid_requests(fleet, server)
        gate.shut_at(*MOMENTS[moment])
        stopping = await stop_in_background(server)
        await silent_until_the_probe(gate, server)
        gate.open()  # Redis answers again, well within back_s
        code, _, err = await stopping
        assert code == 0, err
        assert await fleet.stored() == (REQUESTS, told, OPENING - told, 0), err
        assert await fleet.redis.xlen(STREAM) == 0, err
        assert (await fleet.redis.xpending(STREAM, "writers"))["pending"] == 0, err
        assert await redis_balance(fleet) == OPENING - told, err  # charged once in Redis too


async def test_a_stop_that_redis_leaves_for_longer_says_what_it_leaves_and_the_next_instance_stores_it(tmp_path):
    async with gated_fleet(tmp_path) as (fleet, gate):
        server = await fleet.start()
        told = await paid_requests(fleet, server)
        gate.shut_at(*MOMENTS["counting"])
        code, _, err = await (await stop_in_background(server))  # Redis silent for the whole stop
        assert code == 0, err
        assert f"stopping with the shared ledger stream {STREAM} not drained (Redis did not answer again" in err, err
        assert "what is left there is not lost: the next instance's writer stores it" in err, err
        assert (await fleet.stored())[:2] == (0, 0), err
        gate.open()
        del fleet.config["plugins"]["ledger"]  # (the next one stores at its usual pace)
        fleet.path.write_text(yaml.safe_dump(fleet.config))
        await fleet.start()

        async def stored() -> bool:
            return (await fleet.stored())[0] == REQUESTS

        await until(stored, 60, "the next instance storing the entries")
        assert await fleet.stored() == (REQUESTS, told, OPENING - told, 0)
        assert await redis_balance(fleet) == OPENING - told
