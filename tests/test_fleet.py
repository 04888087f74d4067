"""Three real ``tollway serve`` processes on one Redis and one PostgreSQL: money and limits hold fleet-wide.

One fleet for the module (starting processes is the slow part): a small
balance hammered through all three at once, stream and not; a key with
``rpm: 30`` hammered through all three; a key revoked on one instance and used
on another; and last, kill -9 of an instance while it holds reservations (the
holds expire after ``hold_ttl`` and the money comes back; nothing is charged
twice or lost).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
import yaml
from business import ADMIN_HEADERS, bearer, biz_config
from fleet import kill_all, money_report, redis_url, start_servers, until
from stores import PG, run_pg, schema_name
from test_lifecycle import Server

pytestmark = pytest.mark.fleet

SMALL = "sk-fleet-small-0001"  # $0.002: a fraction of a burst
LIMITED = "sk-fleet-limited-01"  # rpm 30, unmetered
RICH = "sk-fleet-rich-000001"  # $5, for the slow streams of the kill test
OPENING = 2000
HOLD_TTL = 5  # short, for the kill test; long enough for a loaded machine's slowest request


_schema = run_pg  # the name other fleet tests import it by


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    schema = schema_name("tollway_fleet")
    asyncio.run(run_pg(f"create schema {schema}"))
    config = biz_config(keys=[{"name": "small", "key": SMALL, "credits": OPENING / 1e6},
                              {"name": "limited", "key": LIMITED, "credits": None, "limits": {"rpm": 30}},
                              {"name": "rich", "key": RICH, "credits": 5.0}])
    # shutdown_timeout: nothing is in flight when the tests stop an instance; a stray slow
    # stream must not hold the exit for the default 30 s.
    config["server"].update(host="127.0.0.1", access_log="off", shutdown_timeout=5)
    config["storage"] = {"url": f"{PG}?search_path={schema}", "counters": redis_url() + f"&hold_ttl={HOLD_TTL}"}
    # Slower than any loaded machine: the kill test's slow streams are still waiting when it kills.
    config["providers"]["slowp"] = {"kind": "mock", "first_token_delay": 600.0}
    config["models"]["slow"] = {"provider": "slowp", "price": {"input": 1.0, "output": 2.0}}
    # Streams a client leaves after the first chunk: ~2.5 s long, so that a test process starved by
    # its own burst still leaves before the last byte (else the server has told it everything and
    # its row is rightly not "gone", though the test counted nothing told: a flake seen under load).
    config["providers"]["dribble"] = {"kind": "mock", "chunk_delay": 0.25}
    config["models"]["dribble"] = {"provider": "dribble", "price": {"input": 1.0, "output": 2.0}}
    path = tmp / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    servers = asyncio.run(start_servers(path, 3))
    yield servers, schema, path
    kill_all(servers)
    asyncio.run(run_pg(f"drop schema if exists {schema} cascade"))


async def stop_all(servers: list[Server]) -> None:
    """Stop gracefully (each writes what it queued), as an operator would; each must
    exit with 0 (within a generous deadline: a loaded machine is slow)."""
    for s in servers:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    results = await asyncio.to_thread(lambda: [s.stop() for s in servers])
    assert [code for code, _, _ in results] == [0] * len(servers), [err[-2000:] for _, _, err in results]


async def stored(schema: str, account: str) -> tuple[int, int, int]:
    """(ledger sum, ledger rows, stored balance) of an account."""
    conn = await asyncpg.connect(PG, server_settings={"search_path": schema})
    try:
        total, rows = await conn.fetchrow("select coalesce(sum(cost_micro_usd), 0), count(*) from tollway_ledger "
                                          "where account_id = $1", account)
        balance = await conn.fetchval("select balance_micro_usd from tollway_accounts where id = $1", account)
        return int(total), int(rows), int(balance)
    finally:
        await conn.close()


async def stored_by_gone(schema: str, account: str) -> tuple[int, int]:
    """(ledger sum of requests whose client stayed, of those whose client left)."""
    conn = await asyncpg.connect(PG, server_settings={"search_path": schema})
    try:
        rows = dict(await conn.fetch("select client_gone, coalesce(sum(cost_micro_usd), 0) from tollway_ledger "
                                     "where account_id = $1 group by client_gone", account))
        return int(rows.get(0, 0)), int(rows.get(1, 0))
    finally:
        await conn.close()


async def ask(s: aiohttp.ClientSession, server: Server, key: str, stream: bool, model: str = "echo",
              words: int = 3, refusals: list[dict] | None = None) -> tuple[int, int | None]:
    """(status, cost told in micro-USD or None); a 402's error object is appended to ``refusals``."""
    payload = {"model": model, "stream": stream, "max_tokens": 10, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": " ".join("w" for _ in range(words))}]}
    async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(key)) as r:
        body = await r.read()
        if r.status != 200:
            if r.status == 402 and refusals is not None:
                refusals.append(orjson.loads(body)["error"])
            return r.status, None
        if stream:
            last = [line for line in body.split(b"\n") if line.startswith(b"data: {")][-1]
            assert body.endswith(b"data: [DONE]\n\n")
            return 200, round(orjson.loads(last[6:])["usage"]["cost"] * 1e6)
        return 200, round(float(r.headers["x-tollway-cost"]) * 1e6)


async def leave_mid_stream(s: aiohttp.ClientSession, server: Server, key: str) -> tuple[int, None]:
    """A stream its client leaves after the first chunk (told nothing of its cost)."""
    payload = {"model": "dribble", "stream": True, "max_tokens": 10,
               "messages": [{"role": "user", "content": " ".join("w" for _ in range(8))}]}
    async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(key)) as r:
        if r.status == 200:
            await r.content.readany()
            r.close()  # gone, mid-stream
        return r.status, None


async def test_a_burst_over_three_instances_never_overspends(fleet):
    servers, schema, _ = fleet
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=150)) as s:
        answers = await asyncio.gather(*(leave_mid_stream(s, servers[i % 3], SMALL) if i % 10 == 5 else
                                         ask(s, servers[i % 3], SMALL, stream=i % 2 == 0) for i in range(300)))
        statuses = [a[0] for a in answers]
        told = [a[1] for a in answers if a[1] is not None]
        assert set(statuses) <= {200, 402}, statuses
        assert 20 < len(told) < 300  # a real overspend attempt, cut at the balance
        # A request settles just after its last byte went out, and the writers store it within
        # their flush interval: wait (generously: a loaded machine is slow) until nothing is held
        # and every row is stored.
        deadline = time.monotonic() + 60
        while True:
            async with s.get(servers[1].url + "/v1/credits", headers=bearer(SMALL)) as r:
                view = await r.json()
            total, rows, balance = await stored(schema, "cfg_small")
            if (view["reserved_micro_usd"] == 0 and rows == 300) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    # The ledger is the money taken, and the balance every instance shows.
    assert total == OPENING - balance == OPENING - view["balance_micro_usd"] and balance >= 0
    assert view["reserved_micro_usd"] == 0 and rows == 300
    # What the clients who stayed were told is exactly their rows; the streams left mid-way
    # paid for what they had been sent (counted, capped by their hold).
    told_rows, gone = await stored_by_gone(schema, "cfg_small")
    assert told_rows == sum(told) and told_rows + gone == total and gone > 0


async def test_rpm_is_global_across_instances_with_exact_headers(fleet):
    servers, _, _ = fleet
    payload = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}

    async def one(s: aiohttp.ClientSession, server: Server) -> tuple[int, dict]:
        async with s.post(server.url + "/v1/chat/completions", json=payload, headers=bearer(LIMITED)) as r:
            await r.read()
            return r.status, dict(r.headers)

    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        answers = await asyncio.gather(*(one(s, servers[i % 3]) for i in range(60)))
        elapsed = time.monotonic() - started
    admitted = [h for status, h in answers if status == 200]
    refused = [h for status, h in answers if status == 429]
    assert len(admitted) + len(refused) == 60
    # rpm 30 is a burst of 30, then one every 2 s: not 30 per instance.
    assert 30 <= len(admitted) <= 30 + int(elapsed / 2), (len(admitted), elapsed)
    remaining = sorted(int(h["x-ratelimit-remaining-requests"]) for h in admitted)
    # Each request is told its own place; the burst took time, and GCRA gives the slot back
    # a bit at a time (one every 2 s, counted from the first admission's phase), so a place may
    # be told twice once that slot has come back: at most once per slot that could have.
    assert remaining[0] >= 0 and remaining[-1] <= 29, remaining
    assert len(remaining) - len(set(remaining)) <= 1 + int(elapsed / 2), (remaining, elapsed)
    assert all(h["Retry-After"] in ("1", "2") and h["x-ratelimit-remaining-requests"] == "0" for h in refused)


async def test_a_key_revoked_on_one_instance_is_refused_on_the_others_within_a_second(fleet):
    servers, _, _ = fleet
    async with aiohttp.ClientSession() as s:
        async with s.post(servers[0].url + "/admin/keys",
                          json={"name": "fleeting", "credits": 1.0}, headers=ADMIN_HEADERS) as r:
            assert r.status in (200, 201), await r.text()
            made = await r.json()
        plain = made["key"]
        deadline = time.monotonic() + 1.0
        while (await ask(s, servers[2], plain, stream=False))[0] != 200:  # created on A: usable on C
            assert time.monotonic() < deadline, "a key made on one instance was unknown to another after 1 s"
            await asyncio.sleep(0.05)
        async with s.delete(servers[0].url + f"/admin/keys/{made['id']}", headers=ADMIN_HEADERS) as r:
            assert r.status == 200, await r.text()
        revoked = time.monotonic()
        while (await ask(s, servers[1], plain, stream=False))[0] != 401:
            assert time.monotonic() - revoked < 1.0, "a key revoked on one instance still worked on another"
            await asyncio.sleep(0.05)


async def test_a_cli_top_up_applies_on_every_instance_at_once(fleet):
    servers, _, path = fleet
    async with aiohttp.ClientSession() as s:
        async def balances() -> list[int]:
            out = []
            for server in servers:
                async with s.get(server.url + "/v1/credits", headers=bearer(RICH)) as r:
                    out.append((await r.json())["balance_micro_usd"])
            return out

        before = await balances()
        assert len(set(before)) == 1
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "keys", "topup", "--config", str(path), "rich", "0.25",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err
        # The CLI adds it in Redis itself: every instance sees it on the next request.
        assert await balances() == [before[0] + 250_000] * 3


async def test_kill_9_with_holds_in_flight_gives_the_money_back_and_charges_nothing_twice(fleet):
    servers, schema, _ = fleet
    victim, others = servers[0], servers[1:]
    total_before, _, _ = await stored(schema, "cfg_rich")
    async with aiohttp.ClientSession() as s:
        async with s.get(others[0].url + "/v1/credits", headers=bearer(RICH)) as r:
            before = (await r.json())["balance_micro_usd"]
        slow = [asyncio.ensure_future(ask(s, victim, RICH, stream=True, model="slow")) for _ in range(10)]
        done = [await ask(s, others[i % 2], RICH, stream=i % 2 == 0) for i in range(10)]
        # Answered by the victim just before it dies: settled in Redis, not stored by it yet.
        done += await asyncio.gather(*(ask(s, victim, RICH, stream=i % 2 == 0) for i in range(10)))

        async def held() -> int:
            async with s.get(others[1].url + "/v1/credits", headers=bearer(RICH)) as r:
                return (await r.json())["reserved_micro_usd"]

        await until(held, timeout=60, what="the slow streams' holds on the victim")

        async def settled() -> bool:  # the victim charged (in Redis) every answer it gave
            async with s.get(others[1].url + "/v1/credits", headers=bearer(RICH)) as r:
                return (await r.json())["balance_micro_usd"] == before - sum(c for st, c in done if st == 200)

        # (A stream's usage chunk goes out before its settle: killed in between, it was told and
        # not charged. That gap is the single-process crash promise's; this test is about holds.)
        await until(settled, timeout=60, what="the victim's answers charged in Redis")
        victim.proc.send_signal(signal.SIGKILL)
        cut = await asyncio.gather(*slow, return_exceptions=True)
        assert all(isinstance(c, aiohttp.ClientError) for c in cut), cut
        # The holds expire (HOLD_TTL after their last renewal); waited for with a generous deadline.
        killed = time.monotonic()
        while await held():
            assert time.monotonic() - killed < HOLD_TTL + 60, "a dead instance's holds did not expire"
            await asyncio.sleep(0.1)
        async with s.get(others[0].url + "/v1/credits", headers=bearer(RICH)) as r:
            view = await r.json()
    told = [cost for status, cost in done if status == 200]
    assert len(told) == 20 and view["balance_micro_usd"] == before - sum(told)
    # The others' writers store what the victim had settled (claiming what it had taken
    # from the stream and not stored, once it has been idle for hold_ttl), once.
    deadline = time.monotonic() + 3 * HOLD_TTL + 60
    while (await stored(schema, "cfg_rich"))[2] != view["balance_micro_usd"]:
        assert time.monotonic() < deadline, "what the dead instance had settled was not stored"
        await asyncio.sleep(0.2)
    await stop_all(others)
    total, _, balance = await stored(schema, "cfg_rich")
    assert balance == view["balance_micro_usd"] and total - total_before == before - balance


#: The words of each request of the two-workers test: the mock counts 8 prompt tokens and answers
#: the 10 words, 28 micro-USD at $1/$2 per 1M, so a burst of 120 costs 3360, beyond the opening;
#: each holds its worst case meanwhile, ~180 (its body's ~160 bytes as prompt tokens, 10 output).
WORDS = 10
BURST = 120


async def test_two_workers_with_the_business_plugins_share_one_balance(tmp_path):
    """Two processes on one port (SO_REUSEPORT) spend one balance in Redis: a burst of requests,
    half streamed, then one at a time until one is refused; the ledger is what the clients were
    told and what the balance lost.

    Whatever the timing: how many of a burst are refused depends on how many of them hold their
    worst case at once (~180 each against 2000: 11), and a loaded machine changes that (a client
    starved by its host sends them nearly one after another: with 3-word requests of 11 micro-USD,
    all 120 fit in 2000, and were all admitted in a landing train). So the burst's real costs alone
    exceed the balance: some are refused however they interleave (a fleet that admits them all has
    spent what it did not have). Then, nothing in flight, a refusal comes only when the balance left
    is below the request's worst case."""
    schema = schema_name("tollway_workers")
    await run_pg(f"create schema {schema}")
    config = biz_config(keys=[{"name": "small", "key": SMALL, "credits": OPENING / 1e6}])
    config["server"].update(host="127.0.0.1", access_log="off", workers=2)
    config["errors"] = {"extra_fields": True}  # a 402 says what it required and what was left
    counters = redis_url()
    config["storage"] = {"url": f"{PG}?search_path={schema}", "counters": counters}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    server = Server(path)
    try:
        await server.wait_ready()
        children = (Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split())
        assert len(children) == 2  # two processes on one port (SO_REUSEPORT)
        refusals: list[dict] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100, force_close=True)) as s:
            answers = await asyncio.gather(*(ask(s, server, SMALL, stream=i % 2 == 0, words=WORDS)
                                             for i in range(BURST)))
            # One at a time (each on a new connection, to either worker) until one is refused: each
            # admitted costs at least the cheapest of the burst, so the balance runs out within this many.
            cheapest = min((cost for status, cost in answers if status == 200), default=OPENING)
            for i in range(OPENING // cheapest + 1):
                answers.append(await ask(s, server, SMALL, stream=i % 2 == 0, words=WORDS, refusals=refusals))
                if answers[-1][0] != 200:
                    break
            async with s.get(server.url + "/v1/credits", headers=bearer(SMALL)) as r:
                view = await r.json()
        told = [cost for status, cost in answers if status == 200]
        code, _, err = await asyncio.to_thread(server.stop)
        total, rows, balance = await stored(schema, "cfg_small")
        last = refusals[-1] if refusals else {}
        required, left = round(last.get("required", 0) * 1e6), round(last.get("balance", 0) * 1e6)
        if not (BURST * cheapest > OPENING and {status for status, _ in answers[:BURST]} == {200, 402}
                and answers[-1][0] == 402 and {status for status, _ in answers[BURST:-1]} <= {200}
                and required > left == view["balance_micro_usd"] == balance and view["reserved_micro_usd"] == 0
                and code == 0 and total == sum(told) == OPENING - balance and balance >= 0 and rows == len(answers)):
            report = await money_report(schema, "cfg_small", counters,
                                        [(i % 2 == 0, st, c) for i, (st, c) in enumerate(answers)], err)
            pytest.fail(f"exit {code}; ledger sum {total}, rows {rows}, stored balance {balance}, told {sum(told)} "
                        f"(opening {OPENING}); burst {[st for st, _ in answers[:BURST]].count(200)} of {BURST} "
                        f"admitted (cheapest {cheapest}), then {len(answers) - BURST} one at a time, the last "
                        f"refused with {left} left of {view} for {required}\n{report}")
    finally:
        kill_all([server])
        await run_pg(f"drop schema if exists {schema} cascade")
