"""SQLite's memory statistics are switched off when the SQLite store's module is imported with no
connection open in the process (``proxy/store/sqlite.py``: the library shut down and initialized
again around the switch), and left on, with the open connection untouched, when one is. Either way
the store and the connections work. Each case in a fresh process: the switch is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

USED = """
import ctypes, _sqlite3
lib = ctypes.CDLL(_sqlite3.__file__)
lib.sqlite3_memory_used.restype = ctypes.c_int64
"""

STORE = """
import asyncio
from pathlib import Path
from proxy.store import open_store

async def main():
    store = open_store("sqlite:///" + {path!r}, Path({dir!r}))
    await store.connect()
    try:
        await store.execute("create table t (id text primary key, n bigint not null)")
        await store.insert_rows("t", ("id", "n"), [(f"r{{i}}", i) for i in range(50)])
        async with store.transaction() as tx:
            await tx.execute("update t set n = n + 1 where id = ?", ("r7",))
        print("stored", (await store.fetchone("select count(*), sum(n) from t")))
        print("used with the store open", lib.sqlite3_memory_used())
    finally:
        await store.close()

asyncio.run(main())
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_statistics_off_when_nothing_was_open(tmp_path: Path):
    out = _run(USED + "import proxy.store.sqlite as s\nprint('off', s.MEMORY_STATISTICS_OFF)\n"
               + STORE.format(path=str(tmp_path / "a.db"), dir=str(tmp_path)))
    assert "off True" in out
    assert "stored (50, 1226)" in out
    assert "used with the store open 0\n" in out  # (nothing counted: the statistics are off)


def test_statistics_left_on_beside_an_open_connection(tmp_path: Path):
    out = _run(USED + textwrap.dedent("""
        import sqlite3
        early = sqlite3.connect(":memory:")
        early.execute("create table e (x)")
        import proxy.store.sqlite as s
        early.execute("insert into e values (41)")
        print('off', s.MEMORY_STATISTICS_OFF, 'early', early.execute("select x + 1 from e").fetchone())
        """) + STORE.format(path=str(tmp_path / "b.db"), dir=str(tmp_path)))
    assert "off False early (42,)" in out
    assert "stored (50, 1226)" in out
    assert "used with the store open 0\n" not in out  # (counted: the statistics stayed on)
