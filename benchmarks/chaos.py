"""The books under faults, end to end: ``python -m benchmarks.chaos --seconds 90 --seed 7``.

Two real ``tollway serve`` instances on a PostgreSQL schema of their own and a private
redis-server reached through a TCP proxy; clients send a mix (stream or not, with usage or
not, left mid-stream, max_tokens varied) to both while faults come at times drawn from the
seed: Redis cut 0.2-2 s, Redis FLUSHALL, kill -9 of an instance (restarted), SIGTERM
(restarted), admin top-ups. At the end (holds expired, a clean stop) the books are read:
for each metered account the stored balance is >= 0, its ledger sum == opening + top-ups -
balance, and the ledger holds what the clients were told: at least every cost told (less
what a FLUSHALL may lose: answers ended within a second before it, documented in
docs/fleet.md), at most that plus the worst case of every answer the client was not told
(a stream without usage, one it left, one cut by a kill: billed what went out, never more
than the request's bound); a budget's ledger spend <= the budget; ledger ids unique. And
answer by answer, each matched to its own row by its ``x-tollway-request-id`` (the row's
id): a cost told is its row's cost (the row missing only within the FLUSHALL allowance),
an untold answer's row is within its bound, a refusal's costs nothing, and only requests
whose answer's headers never came (an instance killed) can have rows no client named.
Exit 1 on a broken invariant, naming the seed. Needs PostgreSQL (tests/stores.py's PG) and
redis-server on the PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fleet import TcpProxy, free_port  # noqa: E402
from stores import PG  # noqa: E402

ADMIN = "chaos-admin-key-0001"
HOLD_TTL = 3
OPENING = {"cfg_a": 20_000, "cfg_b": 1_000_000, "cfg_bud": 1_000_000}  # micro-USD
BUDGET = 3_000  # cfg_bud's daily budget, micro-USD
KEYS = [{"name": "a", "key": "sk-chaos-a-0001", "credits": OPENING["cfg_a"] / 1e6},
        {"name": "b", "key": "sk-chaos-b-0001", "credits": OPENING["cfg_b"] / 1e6},
        {"name": "bud", "key": "sk-chaos-bud-0001", "credits": OPENING["cfg_bud"] / 1e6,
         "budgets": {"daily": BUDGET / 1e6}},
        {"name": "free", "key": "sk-chaos-free-0001", "credits": None, "limits": {"rpm": 600}}]
TOPUP = 5_000


@dataclass
class Answer:
    account: str
    told: int | None  # the cost the client was told, when it received the whole answer
    bound: int  # the most the request may cost
    status: int | None  # None: the connection failed
    end: float
    rid: str | None = None  # its x-tollway-request-id: its ledger row's id (None: no answer's headers came)


@dataclass
class Run:
    rng: random.Random  # the clients'
    seed: int
    urls: list[str]
    answers: list[Answer] = field(default_factory=list)
    topups: dict[str, list[bool | None]] = field(default_factory=dict)  # account -> ok (None: unknown)
    flushes: list[float] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    bad_exits: list[str] = field(default_factory=list)  # a SIGTERM's exit code not 0


class Instance:
    """One ``tollway serve`` on a fixed port, restarted on the same port; its output in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log, self.port = config, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.config),
                                          "--port", str(self.port)], cwd=ROOT, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.url} exited at start: see {self.log}")
                try:
                    async with s.get(self.url + "/health/ready") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.url} not ready within 60 s")

    async def stop(self, sig: int) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
            return -999


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def client(run: Run, s: aiohttp.ClientSession, deadline: float) -> None:
    """Requests until ``deadline``: one in a mix of kinds at a random instance."""
    rng = run.rng
    while time.monotonic() < deadline:
        key = rng.choice(KEYS)
        kind = rng.choice(["plain", "usage", "nousage", "leave"])
        max_tokens = rng.choice([1, 3, 8, 20])
        content = " ".join("w" for _ in range(rng.randint(1, 30)))
        body = {"model": "dribble" if kind == "leave" or rng.random() < 0.3 else "echo",
                "stream": kind != "plain", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": content}]}
        if kind == "usage":
            body["stream_options"] = {"include_usage": True}
        account = "cfg_" + key["name"]
        bound = len(content) + 64 + 2 * max_tokens + 2  # price 1 and 2 micro-USD a token, rounded up
        told, status, rid = None, None, None
        try:
            async with s.post(rng.choice(run.urls) + "/v1/chat/completions", json=body,
                              headers=bearer(key["key"])) as r:
                status, rid = r.status, r.headers.get("x-tollway-request-id")
                if r.status == 200 and kind == "leave":
                    await r.content.readany()
                    r.close()
                else:
                    data = await r.read()
                    if r.status == 200 and kind == "plain":
                        told = round(float(r.headers["x-tollway-cost"]) * 1e6)
                    elif r.status == 200 and kind == "usage" and data.endswith(b"data: [DONE]\n\n"):
                        last = [ln for ln in data.split(b"\n") if ln.startswith(b"data: {")][-1]
                        told = round(orjson.loads(last[6:])["usage"]["cost"] * 1e6)
        except aiohttp.ClientConnectorError:  # never reached an instance (one killed, restarting)
            bound = 0
        except (TimeoutError, aiohttp.ClientError):
            pass
        run.answers.append(Answer(account, told, bound, status, time.monotonic(), rid))
        if status is not None and status != 200:
            await asyncio.sleep(0.05)


async def faults(run: Run, instances: list[Instance], proxy: TcpProxy, redis_url: str, deadline: float) -> None:
    """Faults one at a time at random moments until ``deadline``."""
    rng = random.Random(run.seed)  # the faults' own: their times and kinds follow the seed alone
    async with aiohttp.ClientSession() as s:
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, rng.uniform(1.0, 5.0)))
            fault = rng.choice(["cut", "cut", "flushall", "kill", "term", "term-in-cut", "topup", "topup"])
            at = f"{time.monotonic() - run.started:.1f}s"  # type: ignore[attr-defined]
            if fault == "cut":
                length = rng.uniform(0.2, 2.0)
                await proxy.cut()
                await asyncio.sleep(length)
                await proxy.start()
                run.faults.append(f"{at} redis cut {length:.1f}s")
            elif fault == "flushall":
                r = aioredis.from_url(redis_url)
                run.flushes.append(time.monotonic())
                await r.flushall()
                await r.aclose()
                run.faults.append(f"{at} FLUSHALL")
            elif fault in ("kill", "term", "term-in-cut"):
                victim, length = rng.choice(instances), rng.uniform(0.5, 5.0)
                if fault == "term-in-cut":  # Redis gone for the stop's drain (past its 3 s: kept in PostgreSQL)
                    await proxy.cut()
                    asyncio.get_running_loop().call_later(length, lambda: asyncio.ensure_future(proxy.start()))
                code = await victim.stop(signal.SIGKILL if fault == "kill" else signal.SIGTERM)
                run.faults.append(f"{at} {fault} {victim.url} (exit {code})"
                                  + (f", Redis cut {length:.1f}s" if fault == "term-in-cut" else ""))
                if fault != "kill" and code != 0:
                    run.bad_exits.append(f"{at} {fault}: exit {code}, see {victim.log}")
                while proxy.server is None or not proxy.server.is_serving():
                    await asyncio.sleep(0.05)
                await victim.start()
            else:
                account = rng.choice(["cfg_a", "cfg_bud"])
                ok: bool | None
                try:
                    async with s.post(rng.choice(instances).url + f"/admin/accounts/{account}/credits",
                                      json={"amount": TOPUP / 1e6}, headers=bearer(ADMIN)) as r:
                        ok = True if r.status == 200 else None if r.status >= 500 else False
                except aiohttp.ClientError:
                    ok = None
                run.topups.setdefault(account, []).append(ok)
                run.faults.append(f"{at} top-up {account} ({ok})")


async def books(schema: str, run: Run) -> list[str]:
    """The broken invariants (empty: none), and prints the summary."""
    conn = await asyncpg.connect(PG, server_settings={"search_path": schema})
    try:
        rows = {r["account_id"]: r for r in await conn.fetch(
            "select account_id, coalesce(sum(cost_micro_usd), 0) as total, count(*) as n, count(distinct id) as ids "
            "from tollway_ledger group by account_id")}
        ledger: dict[str, tuple[str, int]] = {r[0]: (r[1], int(r[2])) for r in await conn.fetch(
            "select id, account_id, cost_micro_usd from tollway_ledger")}  # id -> (account, cost)
        balances = dict(await conn.fetch("select id, balance_micro_usd from tollway_accounts"))
        budget_spent = await conn.fetchval("select coalesce(sum(cost_micro_usd), 0) from tollway_ledger l join "
                                           "tollway_keys k on k.id = l.key_id where k.name = 'bud' and l.day = $1",
                                           time.strftime("%Y-%m-%d", time.gmtime()))
    finally:
        await conn.close()
    broken = []
    for account, opening in OPENING.items():
        row, balance = rows.get(account), int(balances[account])
        total, n, ids = (int(row["total"]), row["n"], row["ids"]) if row else (0, 0, 0)
        mine = [a for a in run.answers if a.account == account]
        told = [a.told for a in mine if a.told is not None]
        untold = sum(a.bound for a in mine if a.told is None and a.status in (200, None))
        lost = sum(a.told for a in mine if a.told is not None and any(f - 1.0 <= a.end <= f + 0.2
                                                                        for f in run.flushes))
        ups = run.topups.get(account, [])
        sure, unsure = TOPUP * ups.count(True), ups.count(None)
        print(f"{account}: opening {opening} + top-ups {sure} (+{unsure} unknown) - balance {balance} ; "
              f"ledger {total} in {n} rows ; told {sum(told)} in {len(told)} answers, untold bound {untold}, "
              f"FLUSHALL may lose {lost}")
        if balance < 0:
            broken.append(f"{account}: stored balance {balance} < 0")
        if not any(opening + sure + k * TOPUP - balance == total for k in range(unsure + 1)):
            broken.append(f"{account}: ledger {total} != opening {opening} + top-ups {sure} (+{unsure} unknown) "
                          f"- balance {balance}")
        if ids != n:
            broken.append(f"{account}: {n - ids} ledger ids repeated")
        if total < sum(told) - lost:
            broken.append(f"{account}: ledger {total} < told {sum(told)} (FLUSHALL allowance {lost})")
        if total > sum(told) + untold:
            broken.append(f"{account}: ledger {total} > told {sum(told)} + untold bound {untold}")
        broken += matched(account, mine, ledger, run.flushes)
        named = [a for a in mine if a.rid is not None]
        print(f"  {len(named)} answers named their row (x-tollway-request-id): {sum(a.rid in ledger for a in named)} "
              f"found, {sum(a.told is not None and a.rid in ledger for a in named)} of them told their cost")
    print(f"budget: spent {budget_spent} of {BUDGET}")
    if budget_spent > BUDGET:
        broken.append(f"budget spent {budget_spent} > {BUDGET}")
    return broken


def matched(account: str, mine: list[Answer], ledger: dict[str, tuple[str, int]], flushes: list[float]) -> list[str]:
    """Each answer against its own ledger row, found by the answer's ``x-tollway-request-id``:
    a cost told is that row's cost (the row may be missing only for an answer ended just before
    a FLUSHALL); an answer not told its cost (a stream without usage, one left, one cut) costs
    at most its bound; a refusal costs nothing; a row no client got an id for (its connection
    failed before an answer's headers) costs at most a request's bound, and there are no more
    of them with a cost than such requests."""
    broken = []
    seen = set()
    for a in mine:
        if a.rid is None:
            continue
        seen.add(a.rid)
        row = ledger.get(a.rid)
        if row is not None and row[0] != account:
            broken.append(f"{account}: answer {a.rid}'s row is {row[0]}'s")
        elif a.told is not None:
            if row is None and not any(f - 1.0 <= a.end <= f + 0.2 for f in flushes):
                broken.append(f"{account}: answer {a.rid} told {a.told}, no ledger row")
            elif row is not None and row[1] != a.told:
                broken.append(f"{account}: answer {a.rid} told {a.told}, its ledger row {row[1]}")
        elif row is not None and row[1] > (a.bound if a.status == 200 else 0):
            broken.append(f"{account}: answer {a.rid} (status {a.status}) has a ledger row of {row[1]}, "
                          f"more than {a.bound if a.status == 200 else 0}")
    unseen = [cost for rid, (acct, cost) in ledger.items() if acct == account and rid not in seen and cost > 0]
    blind = [a for a in mine if a.rid is None and a.bound]
    if len(unseen) > len(blind) or (unseen and max(unseen) > max(a.bound for a in blind)):
        broken.append(f"{account}: {len(unseen)} ledger rows with a cost that no answer named (up to "
                      f"{max(unseen)}), {len(blind)} requests whose answer's headers never came")
    return broken


async def main(seconds: float, seed: int, clients: int = 8) -> int:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="tollway-chaos-"))
    schema = f"tollway_chaos_{seed}_{os.getpid()}"
    redis_port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    proxy = TcpProxy(redis_port)
    instances: list[Instance] = []
    admin = await asyncpg.connect(PG)
    try:
        await admin.execute(f"create schema {schema}")
        await proxy.start()
        config = {"server": {"host": "127.0.0.1", "access_log": "off", "admin_key": ADMIN, "shutdown_timeout": 5},
                  "providers": {"local": {"kind": "mock"}, "dribble": {"kind": "mock", "chunk_delay": 0.02}},
                  "models": {m: {"provider": m if m == "dribble" else "local", "price": {"input": 1.0, "output": 2.0}}
                             for m in ("echo", "dribble")},
                  "plugins": {"enabled": ["auth", "ratelimit", "quotas", "pricing", "ledger"]}, "keys": KEYS,
                  "storage": {"url": f"{PG}?search_path={schema}",
                              "counters": f"redis://127.0.0.1:{proxy.port}/0?prefix=chaos:&hold_ttl={HOLD_TTL}"}}
        path = tmp / "tollway.yaml"
        path.write_text(yaml.safe_dump(config))
        instances = [Instance(path, tmp / f"serve-{i}.log") for i in range(2)]
        for instance in instances:
            await instance.start()
        run = Run(rng, seed, [i.url for i in instances])
        run.started = time.monotonic()  # type: ignore[attr-defined]
        deadline = run.started + seconds  # type: ignore[attr-defined]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            await asyncio.gather(faults(run, instances, proxy, f"redis://127.0.0.1:{redis_port}/0", deadline),
                                 *(client(run, s, deadline) for _ in range(clients)))
        for instance in instances:
            if instance.proc is None or instance.proc.poll() is not None:
                await instance.start()
        await asyncio.sleep(HOLD_TTL + 2)  # the killed instances' holds expire; their stream entries claimed
        codes = [await instance.stop(signal.SIGTERM) for instance in instances]
        statuses: dict[object, int] = {}
        for a in run.answers:
            statuses[a.status] = statuses.get(a.status, 0) + 1
        print(f"seed {seed}, {seconds:.0f}s: {len(run.answers)} requests, statuses {statuses}; "
              f"{len(run.faults)} faults:\n  " + "\n  ".join(run.faults))
        broken = await books(schema, run)
        r = aioredis.from_url(f"redis://127.0.0.1:{redis_port}/0")
        conn = await asyncpg.connect(PG, server_settings={"search_path": schema})
        for account in OPENING:  # all stopped, Redis up: what Redis has is what is stored
            held = await r.hget(f"chaos:acct:{account}", "bal")
            stored = await conn.fetchval("select balance_micro_usd from tollway_accounts where id = $1", account)
            if held is not None and int(held) != stored:
                broken.append(f"{account}: Redis's balance {int(held)} != stored {stored}")
        await r.aclose()
        await conn.close()
        broken += run.bad_exits
        if any(codes):
            broken.append(f"the final stop's exit codes {codes} (logs in {tmp})")
        for line in broken:
            print("BROKEN:", line)
        print(f"{'BROKEN' if broken else 'ok'}: replay with python -m benchmarks.chaos --seconds {seconds:g} "
              f"--seed {seed} --clients {clients}" + (f" (the instances' logs in {tmp})" if broken else ""))
        if not broken:
            shutil.rmtree(tmp, ignore_errors=True)
        return 1 if broken else 0
    finally:
        for instance in instances:
            if instance.proc is not None and instance.proc.poll() is None:
                instance.proc.kill()
                instance.proc.wait()
        await proxy.close()
        redis_proc.kill()
        redis_proc.wait()
        await admin.execute(f"drop schema if exists {schema} cascade")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.seconds, args.seed, args.clients)))
