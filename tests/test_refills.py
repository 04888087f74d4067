"""Refills: a grant every day/week/month, with and without rollover, applied exactly
once per account and period (a row per grant), across restarts and racing passes."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from business import admin, biz_config, chat
from stores import ENGINES, fresh_database
from test_budgets import KEY_A, PRICE, Clock, next_year, paid_config

from plugins.accounts import ACCOUNTS
from plugins.accounts.grants import grants_of
from proxy.gateway import build_gateway
from proxy.schema import ConfigError

UTC = ZoneInfo("UTC")


def refilled(upstream: str, refill: dict, credits: float = 0) -> dict:
    keys = [{"name": "a", "key": KEY_A, "account": "sub"}]
    return paid_config(upstream, keys, accounts={"sub": {"credits": credits, "refill": refill}})


def set_clock(running, clock) -> None:
    book = running.gw.services[ACCOUNTS]
    book.budgets.clock = book.refills.clock = clock


async def spend(s, running, n: int) -> None:
    for _ in range(n):
        status, _, body = await chat(s, running, KEY_A, model="up", max_tokens=8)
        assert status == 200, body


async def test_without_rollover_the_balance_is_brought_up_to_the_grant(start_gateway, mock_upstream):
    running = await start_gateway(refilled(mock_upstream.url, {"every": "month", "amount": 5 * PRICE / 1e6}))
    book = running.gw.services[ACCOUNTS]
    acc = book.accounts["sub"]
    assert acc.balance == 5 * PRICE  # the current month's grant, at start-up
    clock = Clock(next_year(2, 27, 12, 0))
    set_clock(running, clock)
    assert await book.refills.apply_due() == 1  # a new month (for the clock): its grant
    assert acc.balance == 5 * PRICE  # already full: nothing added, the grant is recorded at 0
    async with aiohttp.ClientSession() as s:
        await spend(s, running, 5)
        status, _, body = await chat(s, running, KEY_A, model="up", max_tokens=8)
        assert status == 402 and body["error"]["code"] == "insufficient_credits"
    assert acc.balance == 0
    assert await book.refills.apply_due() == 0  # same month: nothing
    clock.now = datetime(clock_year(clock), 3, 1, 0, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert await book.refills.apply_due() == 1
    assert acc.balance == 5 * PRICE
    await book.writer.flush()
    grants = await grants_of(running.gw.store, "sub")
    assert [(p.split(":")[0], amount) for p, amount, _ in grants] == [("month", 5 * PRICE), ("month", 0),
                                                                      ("month", 5 * PRICE)]
    [(stored,)] = await running.gw.store.fetchall("select balance_micro_usd from tollway_accounts where id = 'sub'")
    assert stored == 5 * PRICE


def clock_year(clock) -> int:
    return datetime.fromtimestamp(clock.now, UTC).year


async def test_with_rollover_what_is_left_carries_over(start_gateway, mock_upstream):
    running = await start_gateway(refilled(mock_upstream.url, {"every": "day", "amount": 2 * PRICE / 1e6,
                                                               "rollover": True}, credits=PRICE / 1e6))
    book = running.gw.services[ACCOUNTS]
    acc = book.accounts["sub"]
    assert acc.balance == 3 * PRICE  # the opening credits and today's grant
    clock = Clock(next_year(4, 1, 23, 0))
    set_clock(running, clock)
    await book.refills.apply_due()
    assert acc.balance == 5 * PRICE
    async with aiohttp.ClientSession() as s:
        await spend(s, running, 1)
    clock.now += 3600  # past midnight in Paris
    assert await book.refills.apply_due() == 1
    assert acc.balance == 6 * PRICE


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_grant_happens_once_per_period_across_restarts_and_races(start_gateway, mock_upstream, engine,
                                                                        tmp_path):
    async with fresh_database(engine, tmp_path) as url:
        await once_case(start_gateway, mock_upstream, url)


async def once_case(start_gateway, mock_upstream, url: str) -> None:
    config = refilled(mock_upstream.url, {"every": "week", "amount": 4 * PRICE / 1e6, "rollover": True})
    config["storage"] = {"url": url}
    first = await start_gateway(config)
    assert first.gw.services[ACCOUNTS].accounts["sub"].balance == 4 * PRICE
    async with aiohttp.ClientSession() as s:
        await spend(s, first, 1)
        await first.server.close()
        second = await start_gateway(config)  # the same week: no second grant
        book = second.gw.services[ACCOUNTS]
        assert book.accounts["sub"].balance == 3 * PRICE
        # Passes that race, and a pass that forgot what it did (another process): still one grant.
        book.refills.done.clear()
        assert sum(await asyncio.gather(*(book.refills.apply_due() for _ in range(5)))) == 0
        assert book.accounts["sub"].balance == 3 * PRICE
        assert len(await grants_of(second.gw.store, "sub")) == 1

        # A refill given through the admin API is granted at once, once.
        status, body = await admin(s, second, "POST", "/admin/accounts",
                                   json={"id": "plan", "refill": {"every": "month", "amount": 1.5}})
        assert status == 201
        status, body = await admin(s, second, "GET", "/admin/accounts/plan")
        assert body["balance_micro_usd"] == 1_500_000 and body["refill"] == {"every": "month", "amount": 1.5,
                                                                              "rollover": False}
        status, body = await admin(s, second, "PATCH", "/admin/accounts/plan",
                                   json={"refill": {"every": "month", "amount": 0}})
        assert status == 400 and body["error"]["param"] == "refill.amount"


@pytest.mark.parametrize(("refill", "message"), [
    ({"every": "month", "amount": 0}, "accounts.sub.refill.amount: must be greater than 0"),
    ({"every": "fortnight", "amount": 1}, "accounts.sub.refill.every"),
    ({"amount": 1}, "accounts.sub.refill.every"),
])
def test_refill_mistakes_name_their_path(tmp_path, refill, message):
    config = biz_config()
    config["accounts"] = {"sub": {"refill": refill}}
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db"}
    with pytest.raises(ConfigError, match=message):
        build_gateway(config, path=tmp_path / "tollway.yaml")
