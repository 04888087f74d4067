"""Make a ledger of N rows (default 1,000,000) for the dashboard benchmark.

    python -m benchmarks.dashboard_data --url sqlite:////tmp/dash.db [--rows 1000000] [--days 30] [--keys 200]
    python -m benchmarks.dashboard_data --url 'postgresql://postgres@127.0.0.1:5432/test?search_path=dashbench'

Rows go through the ledger writer's own batch write (``db.write_batch``), so
the rollups are kept exactly as a running server keeps them. Keys (with
accounts) are made too; one of them, ``customer``, has the plain key
``CUSTOMER_KEY`` for the customer page. The traffic: keys weighted like real
customers (a few heavy, a long tail), six models on three providers,
about 6% errors, 40% streams, log-normal latencies. Deterministic (seeded).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

from plugins.accounts import db
from plugins.accounts.keys import display_prefix, hash_key
from plugins.accounts.model import Account, KeyRecord, Limits
from proxy.store import open_store

CUSTOMER_KEY = "sk-bench-customer-key-000000000001"
MODELS = (  # name, provider, USD per 1M input, output, median latency ms
    ("gpt-4o-mini", "openai", 0.15, 0.60, 900), ("gpt-4o", "openai", 2.5, 10.0, 1800),
    ("claude-sonnet", "anthropic", 3.0, 15.0, 2400), ("claude-haiku", "anthropic", 0.8, 4.0, 800),
    ("gemini-flash", "gemini", 0.1, 0.4, 700), ("echo", "local", 0.0, 0.0, 2))
OUTCOMES = ((200, None, 0.94), (429, "rate_limit_exceeded", 0.03), (402, "insufficient_credits", 0.01),
            (502, "upstream_error", 0.01), (504, "upstream_timeout", 0.005), (400, "invalid_request", 0.005))
BATCH = 5000
MARKER = "dashboard_data_batch"  # the writer's batch-number row, for this script's batches


def make_keys(n: int) -> list[KeyRecord]:
    now = time.time()
    keys = []
    for i in range(n):
        plain = CUSTOMER_KEY if i == 0 else f"sk-bench-{i:06d}-" + "x" * 20
        keys.append(KeyRecord(id=f"key_bench_{i:04d}", name="customer" if i == 0 else f"team-{i:04d}",
                              hash=hash_key(plain), prefix=display_prefix(plain),
                              account_id=f"acct_{i // 2:04d}" if i else "acct_customer", models=None,
                              limits=Limits(rpm=600) if i % 3 == 0 else Limits(), expires_at=None, disabled=False,
                              metadata={}, source="api", created_at=now - 90 * 86400))
    return keys


def rows(n: int, keys: list[KeyRecord], days: int, seed: int = 1):
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** 0.9 for i in range(len(keys))]
    end = time.time()
    start = end - days * 86400
    statuses = list(OUTCOMES)
    status_w = [o[2] for o in OUTCOMES]
    step = (end - start) / n
    picked_keys = rng.choices(keys, weights, k=n)
    for i in range(n):
        t = start + i * step + rng.random() * step
        key = picked_keys[i]
        # Each key mostly uses "its" model, sometimes another.
        home = int(key.id[-4:]) % len(MODELS)
        name, provider, pin, pout, lat_median = MODELS[rng.randrange(len(MODELS)) if rng.random() < 0.3 else home]
        status, code, _ = rng.choices(statuses, status_w)[0]
        stream = rng.random() < 0.4
        prompt = int(rng.lognormvariate(6, 1)) if status == 200 else 0
        completion = int(rng.lognormvariate(5, 1)) if status == 200 else 0
        cost = -(-(prompt * pin + completion * pout) * 1_000_000 // 1_000_000) if status == 200 else 0
        latency = rng.lognormvariate(0, 0.5) * lat_median if status == 200 else rng.random() * 50
        ttfb = latency * rng.uniform(0.05, 0.3) if status == 200 else None
        yield db.LedgerRow(f"bench{i:09d}", t, time.strftime("%Y-%m-%d", time.gmtime(t)), key.id, key.account_id,
                           "chat", name, name if status == 200 else None, provider, status, code, int(stream), 0, 0,
                           prompt, completion, 0, 0, int(cost), round(latency, 3),
                           None if ttfb is None else round(ttfb, 3))


async def generate(url: str, n: int, days: int, nkeys: int) -> None:
    store = open_store(url, Path.cwd())
    await store.connect()
    try:
        await db.create_tables(store)
        keys = make_keys(nkeys)
        async with store.transaction() as tx:
            for k in keys:
                await db.upsert_key(tx, k)
                await db.insert_account(tx, Account(k.account_id, 100_000_000), time.time())
            await db.bump_version(tx)
        started = time.monotonic()
        batch: list[tuple] = []
        done = seq = 0
        for row in rows(n, keys, days):
            batch.append(row)
            if len(batch) == BATCH:
                seq += 1
                async with store.transaction() as tx:
                    await db.write_batch(tx, batch, {}, MARKER, seq)
                done += len(batch)
                batch = []
                if done % 100_000 == 0:
                    print(f"{done:,} rows, {time.monotonic() - started:.0f}s", flush=True)
        if batch:
            async with store.transaction() as tx:
                await db.write_batch(tx, batch, {}, MARKER, seq + 1)
        await db.forget_marker(store, MARKER)
        print(f"{n:,} ledger rows in {time.monotonic() - started:.0f}s")
    finally:
        await store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="storage URL (sqlite:////abs/path.db or postgresql://...)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--keys", type=int, default=200)
    args = p.parse_args()
    asyncio.run(generate(args.url, args.rows, args.days, args.keys))


if __name__ == "__main__":
    main()
