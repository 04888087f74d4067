"""The ledger rows a batch recovery writes: a real ``tollway serve`` killed (SIGKILL) after a
batch's lines were answered and stored, before the ledger's writer stored their charges
(``flush_ms``: a minute). The next start charges them (``batch_recovered``).

- Their rows said 0 input and 0 output tokens (the money was right): ``/v1/usage`` and the
  dashboard undercounted the tokens. They have the line's tokens now.
- A line whose key was no longer in the store (its row deleted) was marked charged and
  nothing was charged: the upstream ran, and its account never paid. Its account pays now,
  the row naming the key. (A revoked key's lines were charged, and are.)
- A line stored before the lines had token columns: the tokens of its answer's ``usage``.
"""

from __future__ import annotations

import signal
import sqlite3

import aiohttp
import openai
import orjson
import pytest
import yaml
from business import ADMIN_HEADERS, biz_config
from test_batches import chat_line, jsonl, wait_done
from test_lifecycle import Server

OPENING = 2_000_000  # micro-USD: the account's balance


# "older": the lines were stored by a version without their token columns (the answer's usage is read)
@pytest.mark.parametrize("key_then", ["kept", "revoked", "deleted", "older"])
async def test_recovered_charges_carry_their_tokens_and_are_paid(tmp_path, key_then):
    config = biz_config(enabled=["auth", "quotas", "pricing", "ledger", "batches"], keys=[],
                        ledger={"flush_ms": 60_000}, batches={"poll_seconds": 0.05})
    config["server"].update(host="127.0.0.1", access_log="off")
    config["storage"] = {"url": "sqlite:///tollway.db"}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    db = tmp_path / "tollway.db"
    lines = [chat_line(i, messages=[{"role": "user", "content": "tell me " * (i + 1)}]) for i in range(3)]
    server = Server(path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(headers=ADMIN_HEADERS) as s:
            async with s.post(server.url + "/admin/accounts", json={"id": "team", "credits": OPENING / 1e6}) as r:
                assert r.status == 201, await r.text()
            async with s.post(server.url + "/admin/keys", json={"name": "batcher", "account": "team"}) as r:
                assert r.status == 201, await r.text()
                made = await r.json()
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=made["key"], max_retries=0) as client:
            f = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            done = await wait_done(client, batch.id)
            out = [orjson.loads(x) for x in (await client.files.content(done.output_file_id)).text.splitlines()]
        assert done.request_counts.completed == len(lines)
        if key_then == "revoked":
            async with aiohttp.ClientSession(headers=ADMIN_HEADERS) as s, \
                    s.delete(f"{server.url}/admin/keys/{made['id']}") as r:
                assert r.status == 200, await r.text()
        server.proc.send_signal(signal.SIGKILL)  # the lines' charges were still in the writer's queue
        server.proc.communicate()
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from tollway_ledger where id like 'batch-%'").fetchone()[0] == 0
            if key_then == "deleted":
                conn.execute("delete from tollway_keys where id = ?", (made["id"],))
            if key_then == "older":
                conn.execute("update tollway_batch_lines set prompt_tokens = null, completion_tokens = null, "
                             "cached_tokens = null, reasoning_tokens = null")
        server = Server(path)
        await server.wait_ready()  # its start charges the lines
    finally:
        server.stop()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select id, key_id, account_id, prompt_tokens, completion_tokens, cost_micro_usd, "
                            "error_code from tollway_ledger where id like 'batch-%' order by id").fetchall()
        balance, spent = conn.execute("select balance_micro_usd, spent_micro_usd from tollway_accounts "
                                      "where id = 'team'").fetchone()
    told = {o["custom_id"]: o["response"]["body"]["usage"] for o in out}
    assert [(r[1], r[2], r[6]) for r in rows] == [(made["id"], "team", "batch_recovered")] * len(lines)
    assert [(r[3], r[4]) for r in rows] == [(told[f"req-{i}"]["prompt_tokens"], told[f"req-{i}"]["completion_tokens"])
                                            for i in range(len(lines))]
    assert all(r[3] > 0 and r[4] > 0 and r[5] > 0 for r in rows)
    assert (balance, spent) == (OPENING - sum(r[5] for r in rows), sum(r[5] for r in rows))
