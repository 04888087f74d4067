"""kill -9 right after the answers: every answered request is charged exactly once.

With counters on Redis a charge is a ``SETTLE`` script; the answer's last bytes go to
the client only after that script's bytes were written to Redis's socket (the core runs
the money's settle just before the end: ``proxy.settles_before_end``). Bytes a process
wrote to a socket are the kernel's to deliver even when it is killed the next instant,
so an instance killed with -9 the moment its clients have their answers has charged
every one of them.

To make the old window wide open, the instances run a plugin whose ``tollway_settle``
takes a second (any slow settle step: a webhook, a remote log): a charge sent after the
answer, behind the other settle hooks, would die with the process. The victim is killed
as soon as the last of its answers has arrived; a second instance's writer then stores
what the victim charged (entries the victim's writer had taken are claimed after
``hold_ttl``), and the ledger, the stored balance and the balance Redis has must each
equal what the clients were told, answer by answer, once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import asyncpg
import pytest
import yaml
from business import bearer, biz_config
from fleet import kill_all, redis_url, start_servers, until
from stores import PG, schema_name
from test_fleet import _schema, ask, stored
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

RICH = "sk-fleet-kill-rich-01"  # $5
HOLD_TTL = 3  # the victim's unacknowledged stream entries are claimed after this
SLOW_SETTLE = '''
import asyncio

from proxy import hookimpl


class Plugin:
    @hookimpl(tryfirst=True)
    async def tollway_settle(self, call):
        await asyncio.sleep(1.0)  # a slow settle step, before every other one
'''


async def test_an_instance_killed_right_after_its_answers_has_charged_each_once(tmp_path):
    schema = schema_name("tollway_kill")
    await _schema(f"create schema {schema}")
    (tmp_path / "kill_test").mkdir()
    (tmp_path / "kill_test" / "__init__.py").write_text("")
    (tmp_path / "kill_test" / "slow_settle.py").write_text(SLOW_SETTLE)
    config = biz_config(keys=[{"name": "rich", "key": RICH, "credits": 5.0}])
    config["plugins"]["enabled"].append("kill_test.slow_settle")
    config["server"].update(host="127.0.0.1", access_log="off", shutdown_timeout=5)
    config["storage"] = {"url": f"{PG}?search_path={schema}", "counters": redis_url() + f"&hold_ttl={HOLD_TTL}"}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    servers: list[Server] = []
    try:
        servers = await start_servers(path, 2, env=env)
        victim, survivor = servers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as s:
            async with s.get(survivor.url + "/v1/credits", headers=bearer(RICH)) as r:
                before = (await r.json())["balance_micro_usd"]
            # Each a different length, so each costs its own amount: told == charged, answer by answer.
            answers = await asyncio.gather(*(ask(s, victim, RICH, stream=i % 2 == 0, words=3 + 7 * i)
                                             for i in range(16)))
            victim.proc.send_signal(signal.SIGKILL)  # the moment the last answer is in
            told = sorted(cost for status, cost in answers if status == 200)
            assert len(told) == 16 and len(set(told)) == 16, answers

            async def charged() -> bool:  # Redis has every charge: they were in its socket first
                async with s.get(survivor.url + "/v1/credits", headers=bearer(RICH)) as r:
                    view = await r.json()
                assert view["balance_micro_usd"] >= before - sum(told), (view, before, told)
                return view["balance_micro_usd"] == before - sum(told)

            await until(charged, timeout=30, what="the killed instance's answers charged in Redis")
        await asyncio.to_thread(victim.proc.wait)
        # The survivor's writer stores what the victim charged, claiming what the victim
        # had taken from the stream once it has been idle for hold_ttl: each row once.
        deadline = time.monotonic() + 3 * HOLD_TTL + 60
        while (await stored(schema, "cfg_rich"))[1] < 16:
            assert time.monotonic() < deadline, "what the killed instance charged was not stored"
            await asyncio.sleep(0.2)
        code, _, err = await asyncio.to_thread(survivor.stop)
        assert code == 0, err[-2000:]
        total, rows, balance_stored = await stored(schema, "cfg_rich")
        costs = await _costs(schema, "cfg_rich")
        assert costs == told and rows == 16 and total == sum(told) == before - balance_stored
    finally:
        kill_all(servers)
        await _schema(f"drop schema if exists {schema} cascade")


async def _costs(schema: str, account: str) -> list[int]:
    conn = await asyncpg.connect(PG, server_settings={"search_path": schema})
    try:
        rows = await conn.fetch("select cost_micro_usd from tollway_ledger where account_id = $1", account)
        return sorted(int(r[0]) for r in rows)
    finally:
        await conn.close()

