"""SQLite's thread runs behind the requests (``proxy/store/sqlite.py``, ``SQLITE_THREAD_NICENESS``):
on a busy core a request does not wait for a ledger flush's time slice, and the flushes go on."""

from __future__ import annotations

import os
import threading

import openai
from business import DEMO, biz_config

from plugins.accounts import ACCOUNTS
from proxy.store import sqlite as sqlite_store


def niceness(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


async def paid_request(url: str) -> str:
    client = openai.AsyncOpenAI(base_url=url, api_key=DEMO)
    try:
        answer = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    return answer.id


async def test_sqlite_thread_is_nicer_than_the_event_loop_and_still_writes(start_gateway):
    loop_tid = threading.get_native_id()
    before = niceness(loop_tid)
    running = await start_gateway(biz_config())
    store = running.gw.store
    sqlite_tid = await sqlite_store.in_thread(store.db, lambda _conn: threading.get_native_id())
    assert sqlite_tid != loop_tid
    assert niceness(sqlite_tid) == min(before + sqlite_store.SQLITE_THREAD_NICENESS, 19)
    assert niceness(loop_tid) == before  # the event loop keeps its priority
    await paid_request(running.url)
    await running.gw.services[ACCOUNTS].writer.flush()
    assert await store.fetchall("select status, cost_micro_usd > 0 from tollway_ledger") == [(200, 1)]


async def test_a_refused_priority_change_is_said_and_the_store_works(start_gateway, monkeypatch, caplog):
    def refuse(*_args) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(sqlite_store.os, "setpriority", refuse)
    caplog.set_level("WARNING", logger="tollway.storage")
    running = await start_gateway(biz_config())
    lines = [r.getMessage() for r in caplog.records if "priority of SQLite's thread" in r.getMessage()]
    assert len(lines) == 1 and "Operation not permitted" in lines[0]
    await paid_request(running.url)
    await running.gw.services[ACCOUNTS].writer.flush()
    assert await running.gw.store.fetchall("select status from tollway_ledger") == [(200,)]
