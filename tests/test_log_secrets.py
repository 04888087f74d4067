"""No log line holds a whole key; a crowd of broken clients makes one line, not a crowd."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from business import ADMIN, DEMO, biz_config

from proxy.logs import LogThrottle, redact

ROOT = Path(__file__).resolve().parent.parent
CLIENT_KEY = "sk-tw-Zq8RrV1bKj5nT0pLwXy3uAe7sD9fGh2iJk4lMn6oPq"


async def raw(running, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(running.server.host, running.server.port)
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


def malformed_requests(key: str) -> list[bytes]:
    """Requests aiohttp's parser refuses, each quoting ``key`` in the bytes it would print."""
    return [
        f"GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\x01\r\n\r\n".encode(),
        f"GET /admin/keys HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\x7f\r\n\r\n".encode(),
        f"GET /v1/models?api_key={key}\x01 HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
        f"GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n Folded: x\r\n\r\n".encode(),
    ]


async def test_malformed_requests_log_no_key_and_answer_json(start_gateway, caplog):
    running = await start_gateway(biz_config(keys=[{"name": "c", "key": CLIENT_KEY, "credits": 1}]))
    caplog.set_level(logging.DEBUG)
    for key in (CLIENT_KEY, ADMIN):
        for data in malformed_requests(key):
            answer = await raw(running, data)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == b"400", answer
            assert b"Content-Type: application/json" in head
            assert b'"code":"bad_http_request"' in body and key.encode() not in answer
    assert CLIENT_KEY not in caplog.text and ADMIN not in caplog.text
    assert "Traceback" not in caplog.text
    assert "malformed HTTP request" in caplog.text  # said, once, without the bytes


async def test_clients_hanging_up_mid_body_make_one_short_line(start_gateway, caplog):
    running = await start_gateway(biz_config())
    caplog.set_level(logging.DEBUG)

    async def hang_up():
        reader, writer = await asyncio.open_connection(running.server.host, running.server.port)
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {DEMO}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"model\":".encode())
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    await asyncio.gather(*(hang_up() for _ in range(200)))
    await asyncio.sleep(0.3)
    lines = [r for r in caplog.records if r.name.startswith(("tollway", "aiohttp"))]
    assert not [r for r in lines if r.exc_info], [r.getMessage() for r in lines if r.exc_info]
    gone = [r.getMessage() for r in lines if "closed its connection" in r.getMessage()]
    assert len(gone) == 1, [r.getMessage() for r in lines]


def test_the_throttle_counts_what_it_left_out(caplog, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 11.0]).__next__
    monkeypatch.setattr("proxy.logs.time.monotonic", clock)
    throttle = LogThrottle(interval=10)
    log = logging.getLogger("tollway.test")
    with caplog.at_level(logging.INFO, logger="tollway.test"):
        assert [throttle.log(log, logging.INFO, "k", "upstream down") for _ in range(4)] == [True, False, False,
                                                                                                True]
    assert [r.getMessage() for r in caplog.records] == [
        "upstream down", "upstream down (2 more like this in the last 11s not shown)"]


def test_redact_keeps_the_display_prefix_only():
    text = redact(f"Bearer {CLIENT_KEY}\x01 and {ADMIN}")
    assert CLIENT_KEY not in text and ADMIN not in text
    assert "sk-tw-Zq8RrV" in text and "\\x01" in text


def test_serve_prints_no_whole_key(tmp_path):
    """The banner names the first key by its prefix; parse errors at -v are one masked line."""
    key = "sk-tollway-demo-" + "k" * 24
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"server: {{port: 0, admin_key: {ADMIN}}}\nstorage: {{url: 'sqlite:///{tmp_path}/t.db'}}\n"
                   "providers: {local: {kind: mock}}\n"
                   "models: {echo: {provider: local, price: {input: 0, output: 0}}}\n"
                   f"keys: [{{name: demo, key: {key}, credits: 1}}]\n"
                   "plugins: {enabled: [auth, ledger]}\n")
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(cfg), "-v"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = proc.stdout.readline()
        port = int(re.search(r":(\d+) ", first).group(1))
        banner = first + proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
        assert key not in banner and "with KEY set to the key of 'demo'" in banner and key[:12] in banner

        async def probe():
            for k in (key, ADMIN):
                for data in malformed_requests(k):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(data)
                    async with asyncio.timeout(5):
                        await reader.read()
                    writer.close()

        asyncio.run(probe())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert key not in out + err and ADMIN not in out + err
    assert "malformed HTTP request" in err and "Traceback" not in err
