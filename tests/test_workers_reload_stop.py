"""A stop of ``tollway serve --workers 2`` waits as long as the reloaded ``server.shutdown_timeout``
says, not the one the parent started with: each worker, as its stop begins, writes its own stop
limit where the parent reads it (proxy/stopping.py, proxy/supervisor.py). Before, the parent
killed the workers at the start value's limit (shutdown_timeout 1 s: 12 s after the SIGTERM),
cutting the streams a reload to 60 s had promised to let finish."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import aiohttp
import openai
import pytest
import yaml
from test_lifecycle import ROOT, STOP_DEADLINE, free_port
from test_reload import until

pytestmark = pytest.mark.early

WORDS = 30  # a stream: 30 chunks 0.5 s apart, 15 s, longer than the start value lets a stop take (12 s)
CHUNK_S = 0.5


def config(port: int, shutdown_timeout: float, price: float) -> dict:
    return {"server": {"host": "127.0.0.1", "port": port, "workers": 2, "access_log": "off",
                       "shutdown_timeout": shutdown_timeout},
            "storage": {"url": "sqlite:///tollway.db"},
            "providers": {"local": {"kind": "mock", "chunk_delay": CHUNK_S}},
            "models": {"echo": {"provider": "local", "price": {"input": price, "output": 2.0}}},
            "plugins": {"enabled": []}}


async def test_a_stop_after_a_reload_waits_for_the_reloaded_shutdown_timeout(tmp_path):
    port = free_port()
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config(port, shutdown_timeout=1, price=1.0)))
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"

    async def every_worker_at(price: float) -> bool:
        """The echo price as 24 fresh connections see it (SO_REUSEPORT spreads them over the workers)."""
        seen = set()
        try:
            for _ in range(24):
                async with aiohttp.ClientSession() as s, s.get(url + "/v1/models/echo") as r:
                    seen.add((await r.json())["pricing"]["input"])
        except aiohttp.ClientError:
            return False
        return seen == {price}

    words = " ".join(f"w{i}" for i in range(WORDS))

    async def one_stream(started: asyncio.Event) -> str:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=120) as client:
            stream = await client.chat.completions.create(model="echo", stream=True,
                                                          messages=[{"role": "user", "content": words}])
            chunks = [await stream.__anext__()]
            started.set()
            chunks += [c async for c in stream]
        assert chunks[-1].choices[0].finish_reason == "stop"
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    try:
        await until(lambda: every_worker_at(1.0), "both workers", 90)
        path.write_text(yaml.safe_dump(config(port, shutdown_timeout=60, price=4.0)))
        proc.send_signal(signal.SIGHUP)  # the parent passes it on to each worker
        await until(lambda: every_worker_at(4.0), "every worker reloaded")
        started = [asyncio.Event() for _ in range(4)]  # four connections: most likely on both workers
        streams = [asyncio.ensure_future(one_stream(event)) for event in started]
        async with asyncio.timeout(60):
            await asyncio.gather(*(event.wait() for event in started))
        proc.send_signal(signal.SIGTERM)  # mid-stream: each has about 14 s to go
        texts = await asyncio.gather(*streams, return_exceptions=True)
        _, err = await asyncio.to_thread(proc.communicate, timeout=STOP_DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert texts == [words] * 4, (texts, err[-3000:])  # every stream finished, whole
    assert "killing them" not in err, err
    assert proc.returncode == 0, err
