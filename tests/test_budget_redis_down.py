"""A budget's total in Redis counts what was spent while Redis was down, once.

A request admitted while Redis answered holds its worst case against its budget (the total's
``held``); Redis going away before the answer ended made the budget's settle fail, and it was
dropped (the credit charge waits in the process and is sent on reconnect, the budget's was
not). Redis back with its data: the total still held the request's worst case for the rest of
the period (plus a day) and had not counted its spend, so every instance showed the budget's
spend without it, and the key could be admitted on less than its budget had left. Now the
budget settles that failed wait in the process like the charges and are applied once when
Redis answers; a stop with Redis still down keeps them in the store with the charges
(``plugins/accounts/redis_owed.py``), for the next instance whose counters answer. Real
``tollway serve`` processes, a redis-server of the test's own behind a TCP proxy the test cuts,
a PostgreSQL schema of its own.
"""

from __future__ import annotations

import aiohttp
import pytest
from business import bearer
from fleet import TcpProxy, stop, until
from test_lifecycle import Server
from test_redis_owed import KEY, Fleet, behind_proxy

pytestmark = pytest.mark.fleet

ACCOUNT = "cfg_k"
OPENING = 1_000_000
BUDGET = 500_000  # micro-USD a day
PREFIX = "bdown:"


class Setup(Fleet):
    """test_redis_owed's set-up, its key with a daily budget."""

    def __init__(self, tmp_path, url: str, redis, proxy: TcpProxy) -> None:
        super().__init__(tmp_path, url, redis, proxy, prefix=PREFIX, key_options={"budgets": {"daily": BUDGET / 1e6}})

    async def ledger(self) -> tuple[int, int]:
        (rows, total), = await self.sql("select count(*), coalesce(sum(cost_micro_usd), 0) from tollway_ledger "
                                        "where account_id = $1", ACCOUNT)
        return rows, int(total)

    async def total(self) -> dict[str, int]:
        """The budget's total in Redis: {used, held} (of the one daily total there is)."""
        names = await self.redis.keys(f"{PREFIX}total:budget:*")
        assert len(names) == 1, names
        return {k.decode(): int(v) for k, v in (await self.redis.hgetall(names[0])).items()}

    async def budget_view(self, server: Server) -> dict:
        async with aiohttp.ClientSession() as s, s.get(server.url + "/v1/credits", headers=bearer(KEY)) as r:
            assert r.status == 200, await r.text()
            budgets = (await r.json())["budgets"]
        assert len(budgets) == 1, budgets
        return budgets[0]


@pytest.fixture
async def setup(tmp_path):
    async with behind_proxy(tmp_path, Setup) as setup:
        yield setup


async def test_a_budget_settle_redis_missed_is_applied_once_when_it_answers_again(setup):
    server = await setup.start()
    told = await setup.answer(server, setup.proxy.cut)  # Redis out of reach as the answer ends
    await setup.proxy.start()  # back, with its data

    async def charged() -> bool:
        bal = await setup.redis.hget(f"{PREFIX}acct:{ACCOUNT}", "bal")
        return bal is not None and int(bal) == OPENING - told and (await setup.ledger())[0] == 1

    await until(charged, 60, "the charge Redis missed sent, and its row stored")
    assert await setup.ledger() == (1, told)

    async def settled() -> bool:
        return (await setup.total()).get("held") == 0

    await until(settled, 30, "the budget's hold settled in Redis")
    # Redis's total counts the spend once and holds nothing: the key may spend its budget less the ledger.
    assert await setup.total() == {"used": told, "held": 0}
    # Another instance reads the same total.
    other = await setup.start()
    view = await setup.budget_view(other)
    assert (view["spent_micro_usd"], view["remaining_micro_usd"]) == (told, BUDGET - told)


async def test_a_stop_with_redis_down_keeps_the_budget_settle_for_the_next_instance(setup):
    server = await setup.start()
    told = await setup.answer(server, setup.proxy.cut)
    code, _, err = await stop(server)  # Redis still down for the whole stop
    assert code == 0, err
    assert await setup.ledger() == (1, told), err  # billed at the stop
    before = await setup.total()  # Redis never got the settle: the worst case still held, nothing spent
    assert before["used"] == 0 and before["held"] >= told, before
    await setup.proxy.start()
    await setup.start()

    async def applied() -> bool:
        (owed,), = await setup.sql("select count(*) from tollway_redis_owed")
        return owed == 0 and (await setup.total()).get("held") == 0

    await until(applied, 60, "what the stop kept applied to Redis")
    assert await setup.total() == {"used": told, "held": 0}
    assert int(await setup.redis.hget(f"{PREFIX}acct:{ACCOUNT}", "bal")) == OPENING - told
