"""server.timeouts on client connections, over real sockets: a client that
dribbles its head or body, or idles on a kept-alive connection, is closed;
normal clients (also ones that send the body in a second packet) are not."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from conftest import base_config

TIMEOUTS = {"header_read": 0.5, "body_read": 0.5, "keepalive_idle": 1.5}
CHAT = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}]}'
# How long a test waits for what must happen. Generous: a loaded machine may be slow to
# close or answer; what the tests check is that it happens, and never before its timeout.
DEADLINE = 60


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(base_config(server={"access_log": "off", "timeouts": TIMEOUTS}))


async def connect(gw):
    return await asyncio.open_connection(gw.server.host, gw.server.port)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 answer with a Content-Length: status, headers, body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes; fails if it has not closed in ``seconds``."""
    async with asyncio.timeout(seconds):
        return await reader.read()


def post(path: str = "/v1/chat/completions", body: bytes = CHAT, length: int | None = None) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


async def closed_or_reset(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """As ``closed_within``; a reset (the server closed with our dribble unread) counts as closed."""
    try:
        return await closed_within(reader, seconds)
    except ConnectionResetError:
        return b""


async def dribble(writer: asyncio.StreamWriter, every: float, times: int) -> None:
    for i in range(times):
        await asyncio.sleep(every)
        if writer.is_closing():
            return
        writer.write(b"X-Slow-%d: a\r\n" % i)


async def test_a_dribbled_head_is_cut_at_header_read(gw):
    """Bytes keep coming, a header line every 50 ms: the head timer is not reset by them."""
    reader, writer = await connect(gw)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n")
    started = time.monotonic()
    task = asyncio.create_task(dribble(writer, 0.05, 20 * DEADLINE))
    try:
        await closed_or_reset(reader, DEADLINE)
    finally:
        task.cancel()
    assert time.monotonic() - started >= TIMEOUTS["header_read"] * 0.8
    writer.close()


async def test_an_unfinished_head_is_answered_408(gw):
    reader, writer = await connect(gw)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n")
    await dribble(writer, 0.05, 4)
    data = await closed_within(reader, DEADLINE)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    err = orjson.loads(body)["error"]
    assert err["code"] == "header_read_timeout" and "header_read" in err["message"]
    writer.close()


async def test_a_silent_connection_is_closed_without_an_answer(gw):
    reader, writer = await connect(gw)
    assert await closed_within(reader, DEADLINE) == b""
    writer.close()


async def test_a_slow_body_is_answered_408_in_the_clients_dialect(gw):
    for path, shape in (("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")):
        reader, writer = await connect(gw)
        writer.write(post(path, CHAT[:10], length=len(CHAT)))
        async with asyncio.timeout(DEADLINE):
            status, headers, body = await read_answer(reader)
        assert status == 408
        data = orjson.loads(body)
        if shape == "openai":
            assert data["error"]["code"] == "body_read_timeout"
        else:
            assert data["type"] == "error" and "body_read" in data["error"]["message"]
        assert await closed_within(reader, DEADLINE) == b""  # and not kept alive for the rest of the body
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed(gw):
    reader, writer = await connect(gw)
    writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, _ = await read_answer(reader)
    assert status == 200
    assert await closed_within(reader, DEADLINE) == b""
    writer.close()


async def test_the_next_head_on_a_kept_alive_connection_is_bounded_too(gw):
    reader, writer = await connect(gw)
    writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_answer(reader))[0] == 200
    writer.write(b"GET /health HTTP/1.1\r\nHost")  # and never the rest
    async with asyncio.timeout(DEADLINE):
        status, _, body = await read_answer(reader)
    assert status == 408 and orjson.loads(body)["error"]["code"] == "header_read_timeout"
    writer.close()


async def test_normal_clients_keep_their_connection(start_gateway):
    """A body sent in a second packet, pauses shorter than keepalive_idle but longer
    than header_read between requests: all answered on one connection. (The timeouts
    that must not fire are far longer than the pauses, so a loaded machine that
    stretches a pause cannot make one fire; header_read is shorter than the idle
    pause, which a slow machine only makes longer.)"""
    timeouts = {"header_read": 0.3, "body_read": 30, "keepalive_idle": 30}
    gw = await start_gateway(base_config(server={"access_log": "off", "timeouts": timeouts}))
    reader, writer = await connect(gw)
    for _ in range(2):
        head, _, body = post().partition(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")
        await asyncio.sleep(0.2)
        writer.write(body)
        async with asyncio.timeout(DEADLINE):
            status, _, answer = await read_answer(reader)
        assert status == 200, answer
        await asyncio.sleep(timeouts["header_read"] * 3)  # idle, under keepalive_idle
    writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_many_slowloris_clients_do_not_starve_normal_ones(gw):
    """200 connections dribbling heads: normal requests are answered meanwhile,
    and every dribbling connection is closed after header_read."""
    conns = [await connect(gw) for _ in range(200)]
    for _, writer in conns:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n")

    dribblers = [asyncio.create_task(dribble(w, 0.1, 10 * DEADLINE)) for _, w in conns]
    try:
        for _ in range(5):
            reader, writer = await connect(gw)
            writer.write(post())
            async with asyncio.timeout(DEADLINE):
                status, _, _ = await read_answer(reader)
            assert status == 200
            writer.close()
        answers = await asyncio.gather(*(closed_or_reset(r, DEADLINE) for r, _ in conns))
    finally:
        for t in dribblers:
            t.cancel()
    assert all(a == b"" or a.startswith(b"HTTP/1.1 408 ") for a in answers)
    for _, writer in conns:
        writer.close()


async def test_timeouts_are_checked_at_start(start_gateway):
    from proxy.schema import ConfigError

    for bad in (0, -1, float("inf")):
        with pytest.raises(ConfigError, match="server.timeouts.body_read: must be a positive"):
            await start_gateway(base_config(server={"timeouts": {"body_read": bad}}))


def test_slow_clients_beyond_half_the_fd_limit_do_not_lock_others_out(tmp_path):
    """``tollway serve`` with 256 file descriptors and 300 connections dribbling
    heads (header_read at its default 10 s): a normal request is answered at
    once, because each connection over 128 closes the oldest waiting one
    (without that, the kernel's accept fails and the request is reset)."""
    import re
    import resource
    import subprocess
    import sys
    from pathlib import Path

    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"server: {{port: 0, access_log: 'off'}}\nstorage: {{url: 'sqlite:///{tmp_path}/t.db'}}\n"
                   "providers: {local: {kind: mock}}\nmodels: {echo: {provider: local, price: {input: 0, output: 0}}}\n"
                   "plugins: {enabled: []}\n")
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(cfg)],
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))

    async def attack_then_ask(port: int) -> int:
        slow = []
        for _ in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n")
            slow.append(writer)
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(DEADLINE):
            answer = await reader.read()
        for w in slow:
            w.close()
        return int(answer.split()[1])

    try:
        port = int(re.search(r":(\d+) ", proc.stdout.readline()).group(1))
        assert asyncio.run(attack_then_ask(port)) == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=3 * DEADLINE)
    assert "closed the oldest that was not in a request" in err
