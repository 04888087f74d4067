"""Leases on shared counters (``redis_leases.py``), through the real server on the real Redis and
PostgreSQL: with ``leases=on`` (the default) an instance serving a funded key keeps a pool of
holds between requests and gives it back when idle; with ``leases=off`` nothing is held between
requests (every admission is one exact ``ADMIT``). Money is exact either way."""

from __future__ import annotations

import aiohttp
import pytest
from business import DEMO, chat, credits
from fleet import until
from test_fleet_money import ledger_and_balance, pg_url, shared_config  # noqa: F401 (pg_url: a fixture)
from test_fleet_writes import having, scripts_in, writes_of_paid_requests

from plugins.accounts import ACCOUNTS
from plugins.accounts import redis_scripts as lua

pytestmark = pytest.mark.fleet


async def pooled(running) -> int:
    """How many holds the demo key's account has in Redis (a pool, when nothing is in flight)."""
    link = running.gw.services[ACCOUNTS].shared.link
    return await link.redis.zcard(link.prefix + "holds:cfg_demo")


@pytest.mark.parametrize("leases", ["on", "off"])
async def test_a_pool_is_kept_between_requests_only_with_leases_and_money_is_exact_either_way(
        pg_url, start_gateway, leases):  # noqa: F811
    config = shared_config(pg_url, 5.0)
    config["storage"]["counters"] += f"&leases={leases}"
    running = await start_gateway(config)
    told = []
    async with aiohttp.ClientSession() as s:
        for i in range(40):
            status, headers, body = await chat(s, running, DEMO, max_tokens=5 + i % 3, content="lease me " * (i % 5))
            assert status == 200, body
            told.append(round(float(headers["x-tollway-cost"]) * 1e6))
        book = running.gw.services[ACCOUNTS]
        await book.settles_done()
        held = await pooled(running)
        if leases == "on":
            assert held > 0  # holds taken ahead, nothing in flight
            await until(lambda: none_held(running), timeout=30, what="the idle pool given back")
        else:
            assert held == 0
        await book.writer.flush()
        await book.writer.drain_shared()
        view = await credits(s, running, DEMO)
    total, balance, rows = await ledger_and_balance(pg_url)
    assert rows == 40 and total == sum(told) == 5_000_000 - balance == 5_000_000 - view["balance_micro_usd"]
    assert view["reserved_micro_usd"] == 0 and all(told)


async def none_held(running) -> bool:
    return await pooled(running) == 0


async def test_one_request_at_a_time_from_leases_writes_only_its_charge_with_its_correction(pg_url, start_gateway):  # noqa: F811
    """The admission of a request its instance's leases cover costs no write and no round trip:
    Redis hears of the request once, its ``SETTLE`` (with the token correction in the same
    write), before the answer's end. A lease refilled on the way is a ``LEASE`` of its own."""
    config = shared_config(pg_url, 5.0)
    config["keys"][0]["limits"] = {"tpm": 1_000_000, "rpm": 10_000}
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # the first seeds the account and takes the leases
            status, _, body = await chat(s, running, DEMO, max_tokens=500)
            assert status == 200, body
        link, each, _ = await writes_of_paid_requests(s, running)
    for mine in each:
        charges = having(link, lua.SETTLE, mine)
        assert having(link, lua.ADMIT, mine) == [] and len(charges) == 1, scripts_in(link, mine)
        # the correction is in the charge's write
        assert having(link, lua.ADJUST, mine) == charges, scripts_in(link, mine)
