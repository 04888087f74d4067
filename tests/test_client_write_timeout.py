"""``server.timeouts.client_write``: a client that stops reading is treated as
gone once it has taken no bytes for that long, so it cannot hold an upstream
connection or a credit reservation for ever. Raw sockets that never read,
against the real server; money checked in the ledger and the balance."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import orjson
from business import DEMO, bearer, biz_config, credits

from plugins.accounts import ACCOUNTS


async def stalled_request(root: str, payload: dict) -> asyncio.StreamWriter:
    """Send one request on a socket with a tiny receive window, and never read."""
    host, port = root.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    _, writer = await asyncio.open_connection(sock=sock)
    body = orjson.dumps(payload)
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {DEMO}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    return writer


async def ledger_rows(running) -> list[tuple]:
    await running.gw.services[ACCOUNTS].writer.flush()
    return await running.gw.store.fetchall("select status, error_code, client_gone, cost_micro_usd "
                                           "from tollway_ledger order by time")


# How long a test waits for what must happen (a loaded machine is slow; a gateway
# without the client write timeout would never get there).
DEADLINE = 120


async def rows_when(running, ready, seconds: float = DEADLINE) -> list[tuple]:
    """The ledger's rows once ``ready(rows)`` (polled: a loaded machine is slow)."""
    deadline = time.monotonic() + seconds
    while True:
        rows = await ledger_rows(running)
        if ready(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"the ledger never got there: {rows}")
        await asyncio.sleep(0.1)


def config_with(upstream: str) -> dict:
    config = biz_config(upstream)
    config["server"]["timeouts"] = {"client_write": 0.5}
    config["server"]["disconnect_drain"] = {"seconds": 5}
    config["providers"]["up"]["max_connections"] = 2
    # Only client_write is short: the upstream's timeouts (first_byte includes the wait for a
    # pooled connection) are long enough that a loaded machine's slow drain cannot fire them.
    config["providers"]["up"]["timeouts"] = {"connect": 30, "first_byte": DEADLINE, "idle": 60, "total": DEADLINE}
    return config


# A stream of about 10 MB: far more than the socket buffers and the transport's high-water mark.
BIG_STREAM = {"model": "up", "stream": True, "max_tokens": 50_000, "messages": [{"role": "user", "content": "go"}],
              "mock": {"chunks": 20_000, "chunk_size": 400}}


async def test_clients_that_never_read_do_not_starve_the_upstream_pool(start_gateway, mock_upstream):
    running = await start_gateway(config_with(mock_upstream.url))
    stalled = [await stalled_request(running.root, BIG_STREAM) for _ in range(2)]  # the whole pool
    try:
        async with aiohttp.ClientSession() as s:
            # Both upstream connections are taken by streams nobody reads; within
            # client_write (plus the drain of what is left upstream) they are given back.
            async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                              json={"model": "up", "messages": [{"role": "user", "content": "hi"}]},
                              timeout=aiohttp.ClientTimeout(total=DEADLINE)) as r:
                assert r.status == 200, await r.text()
            rows = await rows_when(running, lambda rows: sum(r[1] == "client_write_timeout" for r in rows) == 2)
            got = await credits(s, running, DEMO)
    finally:
        for w in stalled:
            w.close()
    stalls = [r for r in rows if r[1] == "client_write_timeout"]
    assert len(stalls) == 2 and all(r[0] == 200 and r[2] == 1 for r in stalls)
    # The stalled streams were drained upstream and billed; nothing is left reserved.
    assert all(r[3] > 0 for r in stalls)
    assert got["reserved_micro_usd"] == 0
    assert got["spent_micro_usd"] == sum(r[3] for r in rows) == 5_000_000 - got["balance_micro_usd"]


async def test_a_large_answer_nobody_reads_releases_its_reservation(start_gateway, mock_upstream):
    running = await start_gateway(config_with(mock_upstream.url))
    whole = {**BIG_STREAM, "stream": False, "mock": {"chunks": 5_000, "chunk_size": 1_000}}  # a 5 MB JSON body
    stalled = await stalled_request(running.root, whole)
    try:
        async with aiohttp.ClientSession() as s:
            await rows_when(running, bool)  # settle runs once the answer is written, or given up on
            got = await credits(s, running, DEMO)
    finally:
        stalled.close()
    [row] = await ledger_rows(running)
    assert row[0] == 200 and row[1] == "client_write_timeout" and row[2] == 1 and row[3] > 0
    assert got["reserved_micro_usd"] == 0
    assert got["spent_micro_usd"] == row[3] == 5_000_000 - got["balance_micro_usd"]
