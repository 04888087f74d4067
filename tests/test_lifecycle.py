"""`tollway serve` as an operator runs it: a real process, signals, workers, access log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


#: How long a SIGTERM'd server may take to exit: its shutdown_timeout (the tests set 10 s or
#: less) plus the flush, on a loaded machine.
STOP_DEADLINE = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_file(tmp_path: Path, **server) -> Path:
    config = {
        "server": {"host": "127.0.0.1", "access_log": "json", "shutdown_timeout": 10, **server},
        "storage": {"url": "sqlite:///tollway.db"},
        "providers": {"local": {"kind": "mock", "chunk_delay": 0.05}},
        "models": {"echo": {"provider": "local", "price": {"input": 0, "output": 0}}},
    }
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Server:
    def __init__(self, config: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--port", str(self.port), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.proc.communicate()
                try:
                    async with s.get(self.url + "/health/ready") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("server did not become ready")

    def stop(self, timeout: float = STOP_DEADLINE) -> tuple[int, str, str]:
        """SIGTERM, then the exit (within ``timeout``: generous, a loaded machine is slow;
        past it the process is killed and the test fails with what it printed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"tollway serve did not stop within {timeout} s of SIGTERM; it printed:\n"
                                 f"{err[-4000:]}") from None
        return self.proc.returncode, out, err


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


async def test_shipped_config_serves_the_mock_model_and_prints_how(tmp_path, servers):
    shipped = tmp_path / "tollway.yaml"
    shipped.write_text((ROOT / "config" / "tollway.yaml").read_text())  # its sqlite file lands in tmp_path
    # No provider keys, no tollway variables: the shipped config must still serve.
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("TOLLWAY_")}
    server = Server(shipped, env=env)
    servers.append(server)
    await server.wait_ready()
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-tollway-demo") as c:
        r = await c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "ping"}])
    assert r.choices[0].message.content == "ping"
    code, out, err = server.stop()
    assert code == 0, err
    assert f"listening on http://127.0.0.1:{server.port}" in out
    assert f"base_url: http://127.0.0.1:{server.port}/v1" in out
    assert "curl " in out


async def test_sigterm_lets_in_flight_streams_finish(tmp_path, servers):
    server = Server(config_file(tmp_path))
    servers.append(server)
    await server.wait_ready()
    words = " ".join(f"w{i}" for i in range(30))  # 30 chunks, 50 ms apart: 1.5 s
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:
        stream = await client.chat.completions.create(model="echo", stream=True,
                                                      messages=[{"role": "user", "content": words}])
        first = await stream.__anext__()
        server.proc.send_signal(signal.SIGTERM)  # mid-stream
        rest = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in [first, *rest])
        assert text == words
        assert rest[-1].choices[0].finish_reason == "stop"
        # No longer accepting new work.
        await asyncio.sleep(0.3)
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "late"}])
    # The one SIGTERM is enough: wait for the exit (a second signal could land after the
    # event loop closed, where the default action kills the process: exit -15).
    _, err = server.proc.communicate(timeout=30)
    assert server.proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    streamed = [x for x in lines if x["stream"]]
    assert streamed and streamed[0]["status"] == 200 and streamed[0]["model"] == "echo"
    assert {"time", "path", "latency_ms", "ttfb_ms", "prompt_tokens"} <= set(streamed[0])


async def test_workers_share_the_port(tmp_path, servers):
    server = Server(config_file(tmp_path), "--workers", "2")
    servers.append(server)
    await server.wait_ready()
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k") as client:
        results = await asyncio.gather(*(client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"n{i}"}]) for i in range(10)))
    assert [r.choices[0].message.content for r in results] == [f"n{i}" for i in range(10)]
    code, out, err = server.stop()
    assert code == 0, err
    assert "with 2 workers" in out


async def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_file(tmp_path)),
                                 "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
