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
    def __init__(self, config: Path, *args: str, env: dict | None = None,
                 launcher: tuple[str, ...] = ("-m", "proxy.cli")) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, *launcher, "serve", "--config", str(config), "--port", str(self.port), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 60  # generous: workers on a loaded machine start slowly
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
        raise AssertionError("server did not become ready within 60 s")

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
    # The one SIGTERM is enough: wait for the exit.
    _, err = server.proc.communicate(timeout=30)
    assert server.proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    streamed = [x for x in lines if x["stream"]]
    assert streamed and streamed[0]["status"] == 200 and streamed[0]["model"] == "echo"
    assert {"time", "path", "latency_ms", "ttfb_ms", "prompt_tokens"} <= set(streamed[0])


# `tollway serve` with signal.signal watched: says so when SIGTERM or SIGHUP is handed back to
# its default action (which ends the process) after the server started. (uvloop takes
# signal.signal when it is imported: patched before.)
WATCHED_SIGNALS = """
import signal, sys
real, serving = signal.signal, []
def watched(sig, handler):
    if sig in (signal.SIGTERM, signal.SIGHUP) and handler == signal.SIG_DFL and serving:
        print(f"watch: {signal.Signals(sig).name} back to its default action", file=sys.stderr, flush=True)
    if sig == signal.SIGTERM and handler not in (signal.SIG_DFL, signal.SIG_IGN):
        serving.append(1)
    return real(sig, handler)
signal.signal = watched
from proxy.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def test_sigterms_back_to_back_never_kill_a_stopping_server(tmp_path, servers):
    """A supervisor repeating its SIGTERM (the fleet tests' stop_all then Server.stop) once
    landed between the removal of the loop's handler and the ignoring of the signal: the
    default action killed the server half-way (exit -15, nothing said). Signals sent back to
    back until the exit: it exits 0 having said it stops, and neither SIGTERM nor SIGHUP is
    ever left to its default action meanwhile."""
    server = Server(config_file(tmp_path), launcher=("-c", WATCHED_SIGNALS))
    servers.append(server)
    await server.wait_ready()
    sent, deadline = 0, time.monotonic() + STOP_DEADLINE
    while server.proc.poll() is None:  # (poll reaps it: no signal goes to a reused pid)
        assert time.monotonic() < deadline, "the server did not stop"
        os.kill(server.proc.pid, signal.SIGHUP if sent and sent % 3 == 0 else signal.SIGTERM)
        sent += 1
    _, err = server.proc.communicate(timeout=STOP_DEADLINE)
    assert "watch:" not in err, err
    assert server.proc.returncode == 0, err
    assert sent > 1 and "tollway: stopping: finishing in-flight requests" in err
    # Said at most once, however many came. (Not exactly once: signals sent before the first is
    # handled merge into one, and those after the stop ends are ignored unsaid, so a quick stop
    # may never see a second one.)
    assert err.count("already stopping") <= 1


async def test_a_stop_stuck_past_its_limit_exits_by_itself_saying_where(tmp_path, servers):
    """Every wait at stop is bounded: a plugin whose shutdown never returns (a write that
    hangs) does not hold the process; it exits 1 after shutdown_timeout + 9 s and says what it
    waited in."""
    (tmp_path / "stuck").mkdir()
    (tmp_path / "stuck" / "__init__.py").write_text("")
    (tmp_path / "stuck" / "at_stop.py").write_text(
        "import asyncio\n"
        "from proxy import hookimpl\n\n\n"
        "@hookimpl\n"
        "async def tollway_shutdown(gateway):\n"
        "    await asyncio.Event().wait()  # never set\n")
    config = config_file(tmp_path, shutdown_timeout=1)
    raw = yaml.safe_load(config.read_text())
    raw["plugins"] = {"enabled": ["stuck.at_stop"]}
    config.write_text(yaml.safe_dump(raw))
    server = Server(config, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    servers.append(server)
    await server.wait_ready()
    code, _, err = server.stop()
    assert code == 1, err
    assert "tollway: still stopping 10 s after the signal (server.shutdown_timeout 1 s + 9 s): exiting now" in err
    assert "at_stop.py:7 tollway_shutdown" in err, err


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
