"""Redis going away and coming back: answers, not hangs, and never limits or money decided blind.

What was chosen (README, "Running several instances"): while the shared
counters cannot be reached, a request that needs them (a metered key's credit,
a limited key's rate limit or concurrency) is answered 503
``counters_unavailable`` with ``Retry-After: 1`` at once: the first one waits
at most the counters timeout, the next ones not at all (the link is marked
down and a probe PINGs until Redis answers). A key with neither credit nor
limits is served. Nothing falls back to per-process limits. Charges for
answers that already went out wait in the process and are sent when Redis is
back. Checked here with a redis-server of the test's own, killed and started
again (empty) on the same port.
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
from business import DEMO, biz_config, chat
from fleet import private_redis, until
from stores import fresh_database

from plugins.accounts import ACCOUNTS

pytestmark = pytest.mark.fleet

FREE = "sk-fleet-free-000001"  # unmetered, no limits: needs no counters
LIMITED = "sk-fleet-lim-0000001"  # unmetered, rpm 100
TIMEOUT = 0.5


@pytest.fixture
async def pg_url(tmp_path):
    async with fresh_database("postgres", tmp_path) as url:
        yield url


async def test_redis_down_answers_503_at_once_and_the_gateway_recovers_by_itself(tmp_path, pg_url, start_gateway):
    with private_redis(tmp_path) as redis:
        port = redis.port
        config = biz_config(keys=[{"name": "demo", "key": DEMO, "credits": 5.0},
                                  {"name": "free", "key": FREE, "credits": None},
                                  {"name": "lim", "key": LIMITED, "credits": None, "limits": {"rpm": 100}}])
        config["storage"] = {"url": pg_url, "counters": f"redis://127.0.0.1:{port}/0?timeout={TIMEOUT}"}
        running = await start_gateway(config)
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, running, DEMO))[0] == 200
            async with s.get(running.root + "/health/ready") as r:
                assert r.status == 200 and await r.json() == {"status": "ready", "storage": "ok", "counters": "ok"}
            redis.kill()
            redis.wait()
            for key in (DEMO, LIMITED, DEMO):
                started = time.monotonic()
                status, headers, body = await chat(s, running, key)
                took = time.monotonic() - started
                assert status == 503 and body["error"]["code"] == "counters_unavailable", body
                assert headers["Retry-After"] == "1" and "storage.counters" in body["error"]["message"]
                assert took < TIMEOUT + 1.0  # bounded by the timeout, never a hang
            assert (await chat(s, running, FREE))[0] == 200  # nothing to decide: served
            async with s.get(running.root + "/health/ready") as r:
                body = await r.json()
                assert r.status == 503 and body["counters"] == "down" and body["storage"] == "ok", body
    # Redis back (empty, as after a restart without persistence): no restart of the gateway needed.
    with private_redis(tmp_path, port=port):
        async with aiohttp.ClientSession() as s:
            async def served() -> bool:
                return (await chat(s, running, DEMO))[0] == 200

            await until(served, 10, "the gateway to use Redis again")
            status, headers, _ = await chat(s, running, LIMITED)
            assert status == 200 and headers["x-ratelimit-limit-requests"] == "100"
            async with s.get(running.root + "/health/ready") as r:
                assert r.status == 200
        # The stored ledger is the money the store says was taken (what a Redis without
        # persistence lost, it lost as a row and its charge together).
        writer = running.gw.services[ACCOUNTS].writer
        await writer.flush()
        await writer.drain_shared()
        total = (await running.gw.store.fetchone(
            "select coalesce(sum(cost_micro_usd), 0) from tollway_ledger where account_id = 'cfg_demo'"))[0]
        balance = (await running.gw.store.fetchone(
            "select balance_micro_usd from tollway_accounts where id = 'cfg_demo'"))[0]
        assert total > 0 and total == 5_000_000 - balance
        await running.close()  # while its Redis runs (the test's end stops it)


@pytest.mark.parametrize(("opening", "budget", "waves", "refusal"), [
    pytest.param(1500, None, (40, 200), (402, "insufficient_credits"), id="balance"),
    pytest.param(5000, 1000, (10, 10), (429, "budget_exceeded"), id="daily-budget"),
])
async def test_redis_emptied_mid_burst_reseeds_from_the_store_no_overspend(tmp_path, pg_url, start_gateway, opening,
                                                                           budget, waves, refusal):
    """Redis forgets everything (FLUSHALL) half way through the spend of a balance, or of a daily
    budget on a key funded for more: the balance and the budget's total are seeded again from
    the store (what is left, what was spent today), not from what this process read at start,
    so the balance is never overdrawn and the day's spend still stops at the budget (not a
    second budget's worth after the flush). ``waves``: the requests at once before the flush,
    and after it."""
    cap = opening if budget is None else budget
    before, after = waves
    with private_redis(tmp_path) as redis:
        key = {"name": "demo", "key": DEMO, "credits": opening / 1e6}
        if budget is not None:
            key["budgets"] = {"daily": budget / 1e6}
        config = biz_config(keys=[key])
        config["storage"] = {"url": pg_url, "counters": f"redis://127.0.0.1:{redis.port}/0"}
        running = await start_gateway(config)
        writer = running.gw.services[ACCOUNTS].writer
        told: list[int] = []

        async def wave(s: aiohttp.ClientSession, n: int) -> int:
            """``n`` requests at once; how many were admitted."""
            answers = await asyncio.gather(*(chat(s, running, DEMO, max_tokens=10) for _ in range(n)))
            # The settles go to Redis behind the answers: on a loaded machine the last wave's holds
            # could still count when the next wave came (all 10 refused, the budget half used).
            await writer.book.settles_done()
            await writer.book.shared.counters.settled()
            for status, headers, body in answers:
                assert status in (200, refusal[0]), body
                if status == 200:
                    told.append(round(float(headers["x-tollway-cost"]) * 1e6))
                else:
                    assert body["error"]["code"] == refusal[1], body
            return sum(1 for status, _, _ in answers if status == 200)

        async with aiohttp.ClientSession() as s:
            while sum(told) < cap / 2:
                assert await wave(s, before)
            first = sum(told)
            assert 0 < first < cap
            await writer.drain_shared()  # what was charged is stored...
            import redis.asyncio as aioredis

            client = aioredis.Redis(port=redis.port)
            await client.flushall()  # ...and Redis forgets the balance, the budget's total, everything
            await client.aclose()
            for _ in range(100):
                if not await wave(s, after):
                    break
        await writer.flush()
        await writer.drain_shared()
        total = (await running.gw.store.fetchone(
            "select coalesce(sum(cost_micro_usd), 0) from tollway_ledger where account_id = 'cfg_demo'"))[0]
        balance = (await running.gw.store.fetchone(
            "select balance_micro_usd from tollway_accounts where id = 'cfg_demo'"))[0]
        await running.close()  # while its Redis runs (the test's end stops it)
    assert first < sum(told) <= cap
    assert total == sum(told) == opening - balance and balance >= 0


async def test_a_redis_that_stops_answering_is_a_503_within_the_timeout_not_a_hang(tmp_path, pg_url, start_gateway):
    with private_redis(tmp_path) as redis:
        config = biz_config()
        config["storage"] = {"url": pg_url, "counters": f"redis://127.0.0.1:{redis.port}/0?timeout={TIMEOUT}"}
        running = await start_gateway(config)
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, running, DEMO))[0] == 200
            redis.send_signal(signal.SIGSTOP)  # connected, silent: the worst kind of outage
            try:
                started = time.monotonic()
                status, _, body = await chat(s, running, DEMO)
                assert status == 503 and body["error"]["code"] == "counters_unavailable", body
                assert time.monotonic() - started < TIMEOUT * 1.25 + 1.0
            finally:
                redis.send_signal(signal.SIGCONT)
            await until(lambda: chat_ok(s, running), 10, "the gateway to use Redis again")
        await running.close()  # while its Redis runs (the test's end stops it)


async def chat_ok(s: aiohttp.ClientSession, running) -> bool:
    return (await chat(s, running, DEMO))[0] == 200
