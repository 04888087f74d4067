"""Redis restarted without persistence (its data gone) under load: the gateway says so in
a few short lines (Redis cannot be reached, answers again, lost its data) and recovers;
no traceback. (The change-notice listener's restore and the routing plugin's shared
breakers each logged one, a ProxyError the outage had already been told by.)"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess

import aiohttp
from business import DEMO, bearer, biz_config
from fleet import private_redis, until
from stores import fresh_database


async def test_a_redis_restart_is_told_in_short_lines_without_a_traceback(start_gateway, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with fresh_database("postgres", tmp_path) as pg:
        with private_redis(tmp_path) as first:
            port = first.port
            config = biz_config()
            config["storage"] = {"url": pg, "counters": f"redis://127.0.0.1:{port}/0?timeout=0.5"}
            running = await start_gateway(config)
            body = {"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            statuses: list[int] = []
            stop = asyncio.Event()

            async def load(s: aiohttp.ClientSession) -> None:
                while not stop.is_set():
                    async with s.post(running.url + "/chat/completions", json=body, headers=bearer(DEMO)) as r:
                        statuses.append(r.status)
                    await asyncio.sleep(0.01)

            second = None
            async with aiohttp.ClientSession() as s:
                tasks = [asyncio.create_task(load(s)) for _ in range(3)]
                try:
                    await until(lambda: len(statuses) >= 10, what="requests served")
                    first.kill()
                    first.wait()
                    await until(lambda: 503 in statuses, what="the outage seen")
                    second = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind",
                                               "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
                                               str(tmp_path)], stdout=subprocess.DEVNULL)
                    served = len(statuses)
                    await until(lambda: statuses[served:].count(200) >= 10, timeout=30, what="served again")
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
                    if second is not None:
                        await running.server.close()
                        second.kill()
                        second.wait()
    told = [r for r in caplog.records if r.name.startswith("tollway")]
    assert any("cannot be reached" in r.getMessage() for r in told)
    assert any("answers again" in r.getMessage() for r in told)
    tracebacks = [f"{r.name}: {r.getMessage()}" for r in told if r.exc_info]
    assert tracebacks == []
