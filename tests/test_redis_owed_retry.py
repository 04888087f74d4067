"""A charge kept in its process (its reply lost) and sent again after its entry was stored and
ten minutes passed is not taken from Redis twice.

Redis slow, not gone: the charge's script reaches Redis after the timeout, so the process keeps
the charge to send it again. Cut off from Redis then (a partition), it keeps it while another
instance's writer stores the charge's stream entry; the done marker then lasts 600 s. Ten minutes
later the first instance reaches Redis again and sends the charge: the script found no marker,
and Redis charged it twice (the store skipped the row it had). Now a kept charge whose row the
store has is not sent again: Redis ran it. The test ages Redis's keys by 600 s
(``test_redis_owed_late.age``)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import yaml
from fleet import stop, until
from test_lifecycle import Server
from test_redis_owed import OPENING, PREFIX, fleet  # noqa: F401  (the fixture)
from test_redis_owed_late import age

from plugins.accounts.redis_scripts import SETTLE

pytestmark = pytest.mark.fleet


async def test_a_kept_charge_whose_row_was_stored_ten_minutes_ago_is_not_sent_again(fleet):  # noqa: F811
    await fleet.redis.script_load(SETTLE)
    fleet.config["storage"]["counters"] = fleet.config["storage"]["counters"].replace("timeout=0.5", "timeout=2")
    fleet.path.write_text(yaml.safe_dump(fleet.config))
    direct = fleet.path.with_name("direct.yaml")
    counters = fleet.config["storage"]["counters"].replace(f":{fleet.proxy.port}/", f":{fleet.redis_server.port}/")
    direct.write_text(yaml.safe_dump({**fleet.config, "storage": {**fleet.config["storage"], "counters": counters}}))
    first = await fleet.start()

    async def slow() -> None:
        fleet.proxy.delay = 4.0

    told = await fleet.answer(first, slow)  # its SETTLE reaches Redis after the timeout: kept in the process

    async def ran() -> bool:
        return await fleet.redis.xlen(f"{PREFIX}ledger") == 1

    await until(ran, 10, "Redis to run the charge it got late")
    await fleet.proxy.cut()  # the first instance cut off from Redis
    fleet.proxy.delay = 0.0
    other = Server(direct)
    fleet.servers.append(other)
    await other.wait_ready()

    async def stored() -> bool:
        return (await fleet.stored())[0] == 1 and await fleet.redis.xlen(f"{PREFIX}ledger") == 0

    await until(stored, 60, "the other instance's writer to store the entry")
    code, _, err = await stop(other)
    assert code == 0, err
    await age(fleet.redis)
    await fleet.proxy.start()  # the first instance reaches Redis again, with its kept charge

    async def ready() -> bool:
        async with aiohttp.ClientSession() as s, s.get(first.url + "/health/ready") as r:
            return r.status == 200

    await until(ready, 60, "the first instance's counters back")
    # Its stop sends what it kept, at the latest (in a thread: this loop runs the proxy to Redis).
    code, _, err = await asyncio.to_thread(first.stop)
    assert code == 0 and "they are stored" not in err, err
    assert await fleet.stored() == (1, told, OPENING - told, 0), err
    assert await fleet.redis_balance() == OPENING - told, err
