"""A budget hold never outlives the request that took it.

A request holds its worst case against its budget's total in Redis and settles it to what it
spent. The holds were one summed number per total (``held``): the hold of an instance killed
with -9 stayed counted until the period ended (the key refused with 429 ``budget_exceeded``
for a day on money nobody spends; LiteLLM's bug #27639), and a settle whose reply was lost
(Redis may or may not have run it) was sent again as "spend only", counted twice when Redis
had run it. Now each hold is a member of the total's own sorted set with an expiry, kept
alive by its instance like a credit hold (``hold_ttl``), and a settle frees its own members:
a hold of a dead instance comes back within the same bound as a credit hold, and a settle
sent twice counts once. Real ``tollway serve`` processes, a redis-server of the test's own,
a PostgreSQL schema of its own.

The first test also holds a balance (no budget) on the killed instance: the credit holds'
sorted set expired whole ``2 * hold_ttl`` after its last refresh (the keep-alive set that
time to live on it), and what its members held then stayed in the account's ``res`` for
good, when no request touched the account between the holds' expiry and the set's.
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
from fleet import TcpProxy, kill_all, private_redis, start_servers, stop, until
from stores import PG, schema_name
from test_budget_redis_down import ACCOUNT, BUDGET, OPENING, PREFIX, Setup
from test_lifecycle import Server
from test_redis_owed import behind_proxy

pytestmark = pytest.mark.fleet

KEY = "sk-fleet-bholds-0001"  # a daily budget at the edge, money to spare
MONEY = "sk-fleet-bholds-0002"  # no budget, a balance at the edge
WORDS = 12  # each stream: 12 output tokens, one every CHUNK_S
CHUNK_S = 1.0  # the streams outlast starting them and the kill
PRICE = 1000.0  # USD per million output tokens: a request costs 12 000 micro-USD, its worst case the same
WORST = WORDS * int(PRICE)
LIMIT = 3 * WORST + WORST // 2  # three requests fit, a fourth does not (the budget; the balance)
HOLD_TTL = 3  # (a loaded machine may hold up the keep-alive of the streams for up to 2 s)


def payload(model: str, stream: bool) -> dict:
    return {"model": model, "stream": stream, "max_tokens": WORDS, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": " ".join(["w"] * WORDS)}]}


async def redis_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return seconds * 1000 + micros // 1000


async def held_until(client: aioredis.Redis) -> list[float]:
    """When each hold in Redis expires (credit and budget holds; a budget's before this change:
    none, its holds were one number)."""
    scores = []
    for zkey in await client.keys("*holds:*"):
        scores += [score for _, score in await client.zrange(zkey, 0, -1, withscores=True)]
    return scores


async def test_the_holds_of_an_instance_killed_mid_burst_come_back_within_the_hold_ttl(tmp_path):
    schema = schema_name("tollway_fbholds")
    db = await asyncpg.connect(PG)
    await db.execute(f"create schema {schema}")
    servers: list[Server] = []
    with private_redis(tmp_path) as redis_server:
        config = biz_config(keys=[{"name": "k", "key": KEY, "credits": 5.0, "budgets": {"daily": LIMIT / 1e6}},
                                  {"name": "m", "key": MONEY, "credits": LIMIT / 1e6}])
        config["server"].update(host="127.0.0.1", access_log="off")
        config["storage"] = {"url": f"{PG}?search_path={schema}",
                             "counters": f"redis://127.0.0.1:{redis_server.port}/0?hold_ttl={HOLD_TTL}"}
        config["providers"]["pacer"] = {"kind": "mock", "chunk_delay": CHUNK_S}
        config["models"]["paced"] = {"provider": "pacer", "price": {"input": 0.0, "output": PRICE}}
        config["providers"]["instant"] = {"kind": "mock"}
        config["models"]["quick"] = {"provider": "instant", "price": {"input": 0.0, "output": PRICE}}
        path = tmp_path / "tollway.yaml"
        path.write_text(yaml.safe_dump(config))
        client = aioredis.Redis(port=redis_server.port)
        try:
            servers = await start_servers(path, 2)
            a, b = servers
            async with aiohttp.ClientSession() as s:
                streams = []  # A's streams, admitted and reading
                for key, refusal in ((KEY, (429, "budget_exceeded")), (MONEY, (402, "insufficient_credits"))):
                    admitted = 0
                    for _ in range(4):  # a burst until the budget (the balance) is full of holds
                        r = await s.post(a.url + "/v1/chat/completions", json=payload("paced", True),
                                         headers=bearer(key))
                        if r.status != 200:
                            body = await r.json()
                            r.release()
                            assert (r.status, body["error"]["code"]) == refusal, body
                            break
                        await r.content.readline()  # the first chunk: admitted and streaming
                        streams.append(r)
                        admitted += 1
                    assert admitted == 3
                taken = await held_until(client)

                async def refreshed() -> bool:  # (the holds A keeps alive, once: a burst of slow streams)
                    return min(await held_until(client)) > max(taken)

                await until(refreshed, 30, "A's holds refreshed")
                a.proc.send_signal(signal.SIGKILL)  # in the middle of the burst: nothing settles
                a.proc.wait()
                for r in streams:
                    r.close()

                # Every hold A refreshed expires by its score, on Redis's clock; the credit holds' set
                # itself expired (before) one hold_ttl after that. Wait until both are past.
                scores = await held_until(client)
                assert len(scores) >= 6, "holds gone: the streams ended before the kill? raise CHUNK_S"
                past = max(scores) + HOLD_TTL * 1000 + 100

                async def expired() -> bool:
                    return await redis_ms(client) > past

                await until(expired, 30, "the dead instance's holds and their set expired")

                async def ask(key: str) -> tuple[int, int]:
                    """(status, micro-USD told) of a quick request through B."""
                    async with s.post(b.url + "/v1/chat/completions", json=payload("quick", False),
                                      headers=bearer(key)) as r:
                        body = orjson.loads(await r.read())
                        if r.status != 200:
                            return r.status, body["error"]["code"]
                        return 200, round(float(r.headers["x-tollway-cost"]) * 1e6)

                # The key is admitted up to its real remaining budget (A's streams were never
                # charged: nothing of the day is spent), the other account up to its balance.
                budget = [await ask(KEY) for _ in range(4)]
                money = [await ask(MONEY) for _ in range(4)]
            assert (budget, money) == ([(200, WORST)] * 3 + [(429, "budget_exceeded")],
                                       [(200, WORST)] * 3 + [(402, "insufficient_credits")])
            code, _, err = await stop(b)
            assert code == 0, err[-3000:]
            for account, answers in (("cfg_k", budget), ("cfg_m", money)):
                total = await db.fetchval(f"select coalesce(sum(cost_micro_usd), 0) from {schema}.tollway_ledger "
                                          "where account_id = $1", account)
                assert total == sum(told for status, told in answers if status == 200) == 3 * WORST
            # The budget's total in Redis: what the ledger has, and nothing held.
            names = [n for n in await client.keys("tollway:total:budget:*")]
            assert len(names) == 1, names
            total = {k.decode(): int(v) for k, v in (await client.hgetall(names[0])).items()}
            assert total == {"used": 3 * WORST, "held": 0}, total
            acct = await client.hgetall("tollway:acct:cfg_m")
            assert (int(acct[b"bal"]), int(acct[b"res"])) == (LIMIT - 3 * WORST, 0), acct
        finally:
            kill_all(servers)
            await client.aclose()
            await db.execute(f"drop schema if exists {schema} cascade")
            await db.close()


class ReplyLoser(TcpProxy):
    """A TCP proxy that, once ``armed``, passes the first command naming a budget's total to Redis
    and from then on drops every reply (Redis runs the settle; its sender never hears of it)."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.armed = False
        self.deaf = False  # replies are dropped
        self.passed = asyncio.Event()

    def passes(self, data: bytes, toward_target: bool) -> bool:
        if not toward_target:
            return not self.deaf
        if self.armed and b"total:budget:" in data:
            self.armed, self.deaf = False, True
            self.passed.set()
        return True

    async def start(self) -> None:
        self.deaf = False
        await super().start()


async def test_a_budget_settle_whose_reply_was_lost_counts_once_and_frees_its_hold(tmp_path):
    async with behind_proxy(tmp_path, Setup, ReplyLoser) as setup:
        await lose_a_settle_reply(setup, setup.proxy)


async def lose_a_settle_reply(setup: Setup, proxy: ReplyLoser) -> None:
    server = await setup.start()

    async def nothing() -> None:
        pass

    async def arm() -> None:
        proxy.armed = True

    # A first answer settles as usual (and Redis has the settle's script from then on).
    first = await setup.answer(server, nothing)

    async def settled() -> bool:
        return await setup.total() == {"used": first, "held": 0}

    await until(settled, 30, "the first answer's budget settled")
    told = await setup.answer(server, arm)  # the budget's settle reaches Redis, its reply does not come back
    await until(proxy.passed.is_set, 60, "the budget's settle sent")

    async def ran() -> bool:
        return (await setup.total()).get("used") == first + told

    await until(ran, 30, "Redis ran the settle")
    await proxy.cut()
    await proxy.start()  # Redis answers again: what the process kept is sent

    async def back() -> bool:
        async with aiohttp.ClientSession() as s, s.get(server.url + "/health/ready") as r:
            return r.status == 200

    await until(back, 60, "the process back on Redis")
    code, _, err = await asyncio.to_thread(server.stop)  # (in a thread: the proxy runs on this loop)
    assert code == 0, err
    assert await setup.ledger() == (2, first + told), err
    (owed,), = await setup.sql("select count(*) from tollway_redis_owed_totals")
    assert owed == 0, err  # (Redis answered at the stop: nothing was kept for later)
    # Counted once, nothing held: the key may spend its budget less the ledger.
    assert await setup.total() == {"used": first + told, "held": 0}, err
    assert int(await setup.redis.hget(f"{PREFIX}acct:{ACCOUNT}", "bal")) == OPENING - first - told
    assert first + told < BUDGET
