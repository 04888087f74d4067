"""/metrics with `server.workers: 2` (Redis counters, PostgreSQL store): a worker killed
with kill -9 leaves no live gauge behind (the other marks it dead), and what it counted
stays counted."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import yaml
from business import DEMO, biz_config, chat
from fleet import redis_url
from stores import PG, run_pg, schema_name
from test_lifecycle import Server
from test_metrics import TOKEN, scrape, total

IDLE = {"state": "idle", "provider": "up"}


async def scrapes_until(server: Server, check, what: str, seconds: float = 15.0) -> dict:
    """Scrape (a new connection each time: the kernel spreads them over the workers) until
    ``check(samples)``."""
    deadline = time.monotonic() + seconds
    seen = []
    while True:
        async with aiohttp.ClientSession() as s:
            samples = await scrape(s, server.url)
        if check(samples):
            return samples
        seen.append((total(samples, "tollway_requests_total", status="200"),
                     total(samples, "tollway_upstream_connections", **IDLE)))
        assert time.monotonic() < deadline, f"{what}: (requests, idle connections) seen {seen[-5:]}"
        await asyncio.sleep(0.1)


async def test_a_worker_killed_with_kill_9_leaves_no_live_gauge_and_its_counts_stay(tmp_path, mock_upstream):
    schema = schema_name("tollway_metrics")
    await run_pg(f"create schema {schema}")
    config = biz_config(mock_upstream.url)
    config["server"].update(host="127.0.0.1", access_log="off", workers=2)
    config["storage"] = {"url": f"{PG}?search_path={schema}", "counters": redis_url()}
    config["metrics"] = {"token": TOKEN, "flush_seconds": 0.1}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    server = Server(path)
    children: list[int] = []
    try:
        await server.wait_ready()
        children = [int(p) for p in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
                    .read_text().split()]
        assert len(children) == 2
        api = type("Api", (), {"url": server.url + "/v1"})
        # One at a time, each on a new client connection and with a pause (so a worker's
        # pooled upstream connection is back in its pool before the next): SO_REUSEPORT spreads
        # connections over the workers, and each keeps exactly one idle connection to the upstream.
        # In rounds, until both workers are seen (the second may start listening a little later).
        sent = 0
        deadline = time.monotonic() + 30
        while True:
            for _ in range(10):
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
                    assert (await chat(s, api, DEMO, model="up", content=f"n{sent}"))[0] == 200
                sent += 1
                await asyncio.sleep(0.02)
            samples = await scrapes_until(server, lambda m, n=sent: total(m, "tollway_requests_total",
                                                                          status="200") == n, "every worker's counts")
            if total(samples, "tollway_upstream_connections", **IDLE) == 2:
                break
            assert time.monotonic() < deadline, "both workers never served"

        os.kill(children[0], signal.SIGKILL)
        samples = await scrapes_until(server, lambda m: total(m, "tollway_upstream_connections", **IDLE) == 1,
                                      "the killed worker's idle connection to leave the gauge")
        assert total(samples, "tollway_requests_total", status="200") == sent  # its counts stay
        for _ in range(5):  # and stay so, whichever worker files a scrape reads
            samples = await scrapes_until(server, lambda m: True, "a scrape")
            assert (total(samples, "tollway_upstream_connections", **IDLE),
                    total(samples, "tollway_requests_total", status="200")) == (1, sent)
        await asyncio.to_thread(server.stop)
    finally:
        if server.proc.poll() is None:
            for pid in children:  # (a worker outliving its parent would keep the pipes open)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            server.proc.kill()
            server.proc.communicate()
        await run_pg(f"drop schema if exists {schema} cascade")
