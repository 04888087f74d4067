"""SIGTERM is bounded by server.shutdown_timeout: a stream still running then
ends with an in-band error, is billed for the output that went out, the
ledger is flushed and the process exits (a real `tollway serve`)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

import aiohttp
import orjson
import yaml
from business import DEMO, bearer, biz_config
from test_lifecycle import Server

from proxy.background import stop_task


async def test_sigterm_stops_a_long_stream_at_the_timeout_and_bills_it(tmp_path):
    config = biz_config()
    config["server"].update(host="127.0.0.1", shutdown_timeout=1, access_log="off")
    config["storage"] = {"url": "sqlite:///tollway.db"}
    config["providers"]["local"] = {"kind": "mock", "chunk_delay": 0.05}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    server = Server(path)
    try:
        await server.wait_ready()
        words = " ".join(f"w{i}" for i in range(600))  # 600 chunks, 50 ms apart: 30 s
        payload = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}],
                   "stream_options": {"include_usage": True}}
        async with aiohttp.ClientSession() as s, s.post(server.url + "/v1/chat/completions", json=payload,
                                                        headers=bearer(DEMO)) as r:
            assert r.status == 200
            await r.content.readline()
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            rest = (await r.content.read()).decode()
        events = [line[6:] for line in rest.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert orjson.loads(events[-2])["error"]["code"] == "gateway_shutting_down"
        sent = "".join((orjson.loads(e)["choices"][0]["delta"].get("content") or "")
                       for e in events[:-2] if '"choices"' in e)
        code = await asyncio.to_thread(server.proc.wait, 60)
        waited = time.monotonic() - signalled
        assert code == 0, server.proc.stderr.read()
        assert waited < 20  # the stream alone had 25 s to go (shutdown_timeout 1 s + the grace)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.communicate()
    db = sqlite3.connect(tmp_path / "tollway.db")
    [(status, error, completion, cost, estimated)] = db.execute(
        "select status, error_code, completion_tokens, cost_micro_usd, estimated from tollway_ledger").fetchall()
    [(balance,)] = db.execute("select balance_micro_usd from tollway_accounts where id = 'cfg_demo'").fetchall()
    assert (status, error, estimated) == (200, "gateway_shutting_down", 1)
    assert completion >= len(sent.split()) > 0 and cost > 0  # what went out before the stop was billed
    assert balance == 5_000_000 - cost


async def test_stop_task_ends_a_background_loop_that_lost_its_cancel():
    """A worker's stop once waited forever for the accounts writer: Python 3.11's
    asyncio.wait_for returns the result when the awaited event is set in the same turn as
    the cancel, so the writer's loop lost its cancel and ran on. stop_task cancels again
    until the task has ended."""
    lost = []

    async def loop_that_loses_one_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            lost.append(1)  # as wait_for on Python 3.11 (or a client library) can lose it
        await asyncio.sleep(3600)

    task = asyncio.create_task(loop_that_loses_one_cancel())
    await asyncio.sleep(0)
    async with asyncio.timeout(60):
        await stop_task(task)
    assert lost == [1] and task.cancelled()
