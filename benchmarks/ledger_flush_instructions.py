"""Instructions one ledger flush costs (both threads), counted by callgrind around the flushes only.

``python -m benchmarks.ledger_flush_instructions [--rows 6] [--flushes 40] [--keys 1] [--tree DIR]``
runs a child under ``valgrind --tool=callgrind --instr-atstart=no`` that writes batches the way
the accounts writer does (``db.store_batch``: the rows, their rollup upserts, the balance
change, the batch number, in one transaction) to a fresh SQLite file: 20 flushes to warm up
(statements prepared, pages cached), then counting is switched on for ``--flushes`` more.
Prints instructions per flush and per row, per thread (the event loop's, SQLite's).
``--tree DIR``: the ``proxy``/``plugins`` of another tree (``git archive main proxy plugins``),
to compare before and after in one run. ``benchmarks.ledger_flush`` times the same in CPU
seconds; this counts what noise cannot move, without the start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOTALS = re.compile(r"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


def ledger_row(batch: int, i: int, keys: int, now: float) -> tuple:
    """A c=1 benchmark's row: one key's chat answers (``keys`` > 1: keys taking turns)."""
    k = i % keys
    return (f"ab12cd34ef56ab78{batch * 1000 + i + 16**10:x}", now + i * 0.001,
            time.strftime("%Y-%m-%d", time.gmtime(now)), f"key_{k}", f"acc_{k}", "chat", "bench", "bench", "mock",
            200, None, 0, 0, 0, 12, 34, 0, 0, 31, 0.5 + (i % 7) * 0.3, 0.4 + (i % 5) * 0.2, 0, 0, 0, 0, 0, 1,
            '["mock/bench"]', 0)


async def work(rows: int, flushes: int, keys: int) -> None:
    """The child: warm up, say READY, flush when told, say DONE."""
    from plugins.accounts import db
    from proxy.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/ledger.db", Path(tmp))
        await store.connect()
        try:
            await db.create_tables(store)
            for seq in range(1, 21 + flushes):
                if seq == 21:
                    print("READY", flush=True)
                    sys.stdin.readline()
                now = time.time()
                batch = [ledger_row(seq, i, keys, now) for i in range(rows)]
                await db.store_batch(store, batch, {f"acc_{k}": [-31, 31] for k in range(keys)}, "writer:b", seq)
            print("DONE", flush=True)
            sys.stdin.readline()
        finally:
            await store.close()


def count(rows: int, flushes: int, keys: int, tree: Path, out: Path) -> list[int]:
    """Instructions per thread over the counted flushes."""
    for old in out.parent.glob(out.name + "*"):
        old.unlink()
    # In the tree's folder: ``-m`` puts it first on the path (its proxy, plugins); this module from here.
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    child = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                              f"--callgrind-out-file={out}", "--log-file=/dev/null", sys.executable, "-m",
                              "benchmarks.ledger_flush_instructions", "--worker", "--rows", str(rows),
                              "--flushes", str(flushes), "--keys", str(keys)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
    assert child.stdin is not None and child.stdout is not None
    try:
        for said, switch in (("READY", "on"), ("DONE", "off")):
            if child.stdout.readline().strip() != said:
                raise SystemExit(f"ledger_flush_instructions: the child did not say {said}")
            subprocess.run(["callgrind_control", "-i", switch, str(child.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            child.stdin.write("go\n")
            child.stdin.flush()
        child.wait(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    parts = [sum(int(m) for m in TOTALS.findall(p.read_text())) for p in sorted(out.parent.glob(out.name + "*"))]
    return [p for p in parts if p]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=6)
    p.add_argument("--flushes", type=int, default=40)
    p.add_argument("--keys", type=int, default=1)
    p.add_argument("--tree", type=Path, default=Path.cwd(), help="the tree whose proxy and plugins to run")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/callgrind"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        asyncio.run(work(args.rows, args.flushes, args.keys))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    tree = args.tree.resolve()
    parts = count(args.rows, args.flushes, args.keys, tree, (args.out / f"callgrind-flush-{tree.name}.out").resolve())
    total = sum(parts) / args.flushes
    threads = ", ".join(f"{c / args.flushes:,.0f}" for c in parts)
    print(f"{tree}: {args.rows} rows/flush, {args.keys} key(s): {total:,.0f} instructions a flush, "
          f"{total / args.rows:,.0f} a row; per thread a flush: {threads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
