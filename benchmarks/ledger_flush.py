"""What one ledger flush costs, by rows per flush: the writer's per-flush and per-row shares.

``python -m benchmarks.ledger_flush [--rows 1,20,150] [--flushes 200]`` writes
batches the way the accounts writer does (``db.store_batch``: in one transaction
the rows, their six rollup upserts, the balance change, the batch number) to a
fresh SQLite file and prints the CPU time per flush and per row (both threads:
the event loop's and aiosqlite's). Under ``valgrind --tool=callgrind`` the same
run counts instructions; two runs that differ only in ``--flushes`` give the
instructions per flush without the start-up.

Why it matters: the writer flushes ``flush_ms / 2`` after the oldest row waiting,
so rows per flush follow the request rate. At 1,500 requests/s a flush holds about
150 rows; under callgrind (30-50x slower) the same benchmark sees 10-20, and the
per-flush share, which is most of a small flush's cost, is counted per request
several times over (``benchmarks.instructions`` says so next to its counts).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from plugins.accounts import db
from proxy.store import open_store


def ledger_rows(n: int, batch: int) -> list[db.LedgerRow]:
    now = time.time()
    return [db.LedgerRow(f"bench{batch:08d}{i:06d}", now, time.strftime("%Y-%m-%d", time.gmtime(now)), "key_1",
                         "acc_1", "chat", "bench", "bench", "mock", 200, None, 0, 0, 0, 12, 34, 0, 0, 31,
                         0.5 + (i % 7) * 0.3, 0.4 + (i % 5) * 0.2)
            for i in range(n)]


async def run(rows: int, flushes: int) -> float:
    """CPU seconds per flush of ``rows`` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/ledger.db", Path(tmp))
        await store.connect()
        try:
            await db.create_tables(store)
            batches = [ledger_rows(rows, i) for i in range(flushes)]
            started = time.process_time()
            store_batch = getattr(db, "store_batch", None)  # the writer's call (older trees: write_batch)
            for seq, batch in enumerate(batches, 1):
                deltas = {"acc_1": [-31 * rows, 31 * rows]}
                if store_batch is not None:
                    await store_batch(store, batch, deltas, "writer:bench", seq)
                else:
                    async with store.transaction() as tx:
                        await db.write_batch(tx, batch, deltas, "writer:bench", seq)
            return (time.process_time() - started) / flushes
        finally:
            await store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1,20,150", help="rows per flush, comma-separated")
    p.add_argument("--flushes", type=int, default=200)
    args = p.parse_args(argv)
    for rows in (int(r) for r in args.rows.split(",")):
        per_flush = asyncio.run(run(rows, args.flushes))
        print(f"{rows:5} rows/flush: {per_flush * 1e6:8.0f} us CPU per flush, {per_flush / rows * 1e6:7.1f} us per row",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
