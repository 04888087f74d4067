"""Redis loses its data (FLUSHALL) while requests hold a budget or a balance: the budget still
caps the spend, and the balance still pays for every answer.

Two real ``tollway serve`` processes on a redis-server of the test's own and one
PostgreSQL schema. Slow streams on instance A hold a daily budget up to its edge
(the next one is refused); Redis is emptied; then new requests come through B. The
budget's total is seeded again from the store, which has spent nothing yet: without
the holds of A's streams it would admit a second budget's worth. A puts its holds
back before B's seed is used (``plugins/accounts/redis_restore.py``), so B refuses
them, and when the streams have ended the day's spend is at most the budget, and the
ledger is what the clients were told. The same with a balance instead of a budget:
without the holds, new requests would spend the money the streams are then charged
with, and they would be given away.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from business import bearer, biz_config
from fleet import kill_all, private_redis, start_servers
from stores import PG, schema_name
from test_lifecycle import Server

pytestmark = [pytest.mark.fleet, pytest.mark.early]

KEY = "sk-fleet-flush-00001"  # a daily budget at the edge, money to spare
MONEY = "sk-fleet-flush-00002"  # no budget, a balance at the edge
WORDS = 12  # each stream: 12 output tokens, one every CHUNK_S
CHUNK_S = 1.0  # the streams outlast starting them, the flush and the new requests on a loaded machine
PRICE = 1000.0  # USD per million output tokens: a stream costs 12 000 micro-USD, its worst case the same
WORST = WORDS * int(PRICE)  # input is free and max_tokens == WORDS: the hold is the cost
BUDGET = 3 * WORST + WORST // 2  # three streams fit, a fourth does not


def payload(stream: bool = True) -> dict:
    return {"model": "paced", "stream": stream, "max_tokens": WORDS, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": " ".join(["w"] * WORDS)}]}


async def test_a_flushall_with_holds_in_flight_passes_neither_a_budget_nor_a_balance(tmp_path):
    schema = schema_name("tollway_fflush")
    db = await asyncpg.connect(PG)
    await db.execute(f"create schema {schema}")
    servers: list[Server] = []
    with private_redis(tmp_path) as redis_server:
        config = biz_config(keys=[{"name": "k", "key": KEY, "credits": 5.0, "budgets": {"daily": BUDGET / 1e6}},
                                  {"name": "m", "key": MONEY, "credits": BUDGET / 1e6}])
        config["server"].update(host="127.0.0.1", access_log="off")
        config["storage"] = {"url": f"{PG}?search_path={schema}",
                             "counters": f"redis://127.0.0.1:{redis_server.port}/0"}
        config["providers"]["pacer"] = {"kind": "mock", "chunk_delay": CHUNK_S}
        config["models"]["paced"] = {"provider": "pacer", "price": {"input": 0.0, "output": PRICE}}
        path = tmp_path / "tollway.yaml"
        path.write_text(yaml.safe_dump(config))
        try:
            servers = await start_servers(path, 2)
            a, b = servers
            async with aiohttp.ClientSession() as s:
                streams: dict[str, list] = {KEY: [], MONEY: []}  # A's streams, admitted and reading
                for key, refusal in ((KEY, (429, "budget_exceeded")), (MONEY, (402, "insufficient_credits"))):
                    for _ in range(4):  # until the budget (the balance) is full of holds: the fourth is refused
                        r = await s.post(a.url + "/v1/chat/completions", json=payload(), headers=bearer(key))
                        if r.status != 200:
                            body = await r.json()
                            r.release()
                            assert (r.status, body["error"]["code"]) == refusal, body
                            break
                        await r.content.readline()  # the first chunk: admitted and streaming
                        streams[key].append(r)
                    assert len(streams[key]) == 3

                client = aioredis.Redis(port=redis_server.port)
                await client.flushall()  # Redis forgets the budget's total, the holds, everything
                await client.aclose()

                async def new_request(server: Server, key: str) -> tuple[int, int]:
                    """(status, micro-USD told)."""
                    async with s.post(server.url + "/v1/chat/completions", json=payload(stream=False),
                                      headers=bearer(key)) as r:
                        body = orjson.loads(await r.read())
                        if r.status != 200:
                            assert r.status in (402, 429), body
                            return r.status, 0
                        return 200, round(float(r.headers["x-tollway-cost"]) * 1e6)

                # B first (it seeds what Redis lost), then both.
                fresh = {key: [await new_request(b, key)] for key in streams}
                for key in streams:
                    fresh[key] += await asyncio.gather(*(new_request(servers[i % 2], key) for i in range(4)))
                reserved = {}
                for key in streams:
                    async with s.get(a.url + "/v1/credits", headers=bearer(key)) as r:
                        reserved[key] = (await r.json())["reserved_micro_usd"]

                told: dict[str, list[int]] = {key: [t for _, t in fresh[key]] for key in streams}
                for key, responses in streams.items():  # the streams end, and are charged
                    for r in responses:
                        body = await r.read()
                        assert body.endswith(b"data: [DONE]\n\n")
                        last = [line for line in body.split(b"\n") if line.startswith(b"data: {")][-1]
                        told[key].append(round(orjson.loads(last[6:])["usage"]["cost"] * 1e6))
                        r.release()
            assert [status for status, _ in fresh[KEY]] == [429] * 5, fresh
            assert [status for status, _ in fresh[MONEY]] == [402] * 5, fresh
            # Asked while every stream still held its share (else this would prove nothing); Redis
            # counts those holds again.
            assert reserved == {KEY: 3 * WORST, MONEY: 3 * WORST}, (reserved, "a stream ended early? raise CHUNK_S")
            assert sum(told[KEY]) == sum(told[MONEY]) == 3 * WORST <= BUDGET
            for server in servers:
                server.proc.send_signal(signal.SIGTERM)
            for code, _, err in await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers)):
                assert code == 0, err[-3000:]
            for key, account in ((KEY, "cfg_k"), (MONEY, "cfg_m")):
                total = await db.fetchval(f"select coalesce(sum(cost_micro_usd), 0) from {schema}.tollway_ledger "
                                          "where account_id = $1", account)
                assert total == sum(told[key]), (key, total, told[key])
            balance = await db.fetchval(f"select balance_micro_usd from {schema}.tollway_accounts where id = 'cfg_m'")
            assert balance == BUDGET - 3 * WORST
        finally:
            kill_all(servers)
            await db.execute(f"drop schema if exists {schema} cascade")
            await db.close()
