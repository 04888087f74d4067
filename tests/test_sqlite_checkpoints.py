"""The WAL's checkpoints run on a connection of their own (``proxy/store/sqlite.py``,
``CHECKPOINT_S``), not inside whichever commit passes SQLite's automatic threshold: a ledger
flush's commit never carries a checkpoint's fsyncs (README, "What a crash can lose")."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3

import openai
from business import DEMO, biz_config

from plugins.accounts import ACCOUNTS
from proxy.store import sqlite as sqlite_store


def rows_in_database_file(tmp_path) -> int:
    """Ledger rows in the database file alone (without its WAL): only a checkpoint puts them there."""
    copy = tmp_path / "copy.db"
    shutil.copyfile(tmp_path / "tollway.db", copy)
    db = sqlite3.connect(copy)
    try:
        return db.execute("select count(*) from tollway_ledger").fetchone()[0]
    finally:
        db.close()


async def test_checkpoints_run_beside_the_flushes_not_in_their_commits(start_gateway, tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_S", 0.02)
    running = await start_gateway(biz_config(ledger={"flush_ms": 600_000}))
    store = running.gw.store
    assert await store.fetchall("pragma wal_autocheckpoint") == [(0,)]  # no commit checkpoints
    client = openai.AsyncOpenAI(base_url=running.url, api_key=DEMO)
    try:
        for i in range(3):
            await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"n {i}"}])
    finally:
        await client.close()
    await running.gw.services[ACCOUNTS].writer.flush()
    for _ in range(500):  # (a wait for the checkpointer, not a time limit on it)
        if rows_in_database_file(tmp_path) == 3:
            break
        await asyncio.sleep(0.02)
    assert rows_in_database_file(tmp_path) == 3
    await running.server.close()  # the checkpointer ends with the store (its thread's connection closed)
    assert store._checkpointer is None



async def test_a_checkpoint_that_keeps_failing_is_said_once_not_every_time(start_gateway, monkeypatch, caplog):
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_S", 0.01)
    real_connect = sqlite_store.checkpoint_connection
    failures = []

    class Failing:  # the checkpointer's own connection: every checkpoint fails (a full disk, say)
        def __init__(self, path: str) -> None:
            self.conn = real_connect(path)

        def execute(self, sql: str) -> None:
            failures.append(sql)
            raise sqlite3.OperationalError("database or disk is full")

        def close(self) -> None:
            self.conn.close()

    monkeypatch.setattr(sqlite_store, "checkpoint_connection", Failing)
    caplog.set_level("WARNING", logger="tollway.storage")
    running = await start_gateway(biz_config())
    for _ in range(1000):  # (a wait for twenty failed checkpoints, not a time limit)
        if len(failures) >= 20:
            break
        await asyncio.sleep(0.01)
    assert len(failures) >= 20
    lines = [r.getMessage() for r in caplog.records if "WAL checkpoint failed" in r.getMessage()]
    assert lines == ["storage: a WAL checkpoint failed: OperationalError: database or disk is full"]
    client = openai.AsyncOpenAI(base_url=running.url, api_key=DEMO)
    try:  # the gateway goes on answering meanwhile
        answer = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert answer.choices[0].message.content
