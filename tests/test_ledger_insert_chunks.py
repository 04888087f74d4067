"""A flush's ledger rows go to SQLite in as few insert statements as ``INSERT_CHUNK`` allows
(one for up to 32 rows, not one per power of two: 4 + 2 + 1 for 7), through the real
server, and every row is stored as the answers said."""

from __future__ import annotations

import aiohttp
from business import biz_config, chat

from plugins.accounts import ACCOUNTS
from proxy.store import sqlite as sqlite_store

KEY = "sk-test-chunks-0001"



async def test_a_flush_of_seven_rows_is_one_insert(start_gateway, tmp_path):
    config = biz_config(keys=[{"name": "k", "key": KEY, "credits": 5.0}], ledger={"flush_ms": 600000})
    config["storage"] = {"url": f"sqlite:///{tmp_path}/store.db"}
    running = await start_gateway(config)
    writer = running.gw.services[ACCOUNTS].writer
    statements: list[str] = []
    ids = []
    async with aiohttp.ClientSession() as s:
        for i in range(7):
            status, headers, _ = await chat(s, running, KEY, content="hi " * (i + 1), stream=i % 2 == 1)
            assert status == 200
            ids.append(headers["x-tollway-request-id"])
    await running.gw.store.db.set_trace_callback(statements.append)
    await writer.flush()
    await running.gw.store.db.set_trace_callback(None)
    inserts = [sql for sql in statements if sql.startswith("insert into tollway_ledger ")]
    assert len(inserts) == 1 and all(f"'{i}'" in inserts[0] for i in ids)  # all seven rows in one statement
    stored = await running.gw.store.fetchall("select id, stream, status from tollway_ledger order by time")
    assert [r[0] for r in stored] == ids and [r[1] for r in stored] == [i % 2 for i in range(7)]
    await running.server.close()


def test_chunks_are_32_rows_then_what_is_left():
    store = sqlite_store.SQLiteStore("sqlite://:memory:", None)  # (no connection: the steps alone)
    columns = ("id", "n")
    for count, sizes in ((7, [7]), (32, [32]), (33, [32, 1]), (70, [32, 32, 6])):
        steps = store.insert_steps("t", columns, [(f"r{i}", i) for i in range(count)])
        assert [len(params) for _sql, params, _many in steps] == sizes
