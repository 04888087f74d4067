"""A stream's upstream connection is reused when its last event and its body's end come apart.

An upstream stream ends with its last event (``[DONE]``) and then the body's chunked
terminator; the two often come in separate writes (aiohttp's ``write_eof`` writes the
terminator alone), so the gateway, done at ``[DONE]``, used to give the connection back
before its answer had ended, and the pool closed it: under the benchmark's ``stream``
scenario one stream in 13 opened a new upstream connection. Now the connection waits for
its end (``ConnectionPool.release``'s ``settle``) without holding the client up, and is
reused; an upstream that never ends its body, or sends too much after the end, gets its
connection closed, and a request that finds the pool full does not wait on such a one.

The upstream here is a raw socket server (the test decides when each byte of the body's
end goes out); the clients are the official ``openai`` SDK; what is checked is what an
operator and a client see: the connections the upstream accepted, ``/metrics``' idle
connections, the client's whole stream, and the ledger billed at the upstream's usage.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from business import DEMO, biz_config, ledger_rows
from fleet import until
from openai import AsyncOpenAI
from test_metrics import TOKEN, scrape, total
from test_stream_one_read import DONE, USAGE, chunk
from test_upstream_framing import RawUpstream, raw_upstream  # noqa: F401 (raw_upstream: a fixture)

from proxy import http1, pool

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENTS = [chunk(0), chunk(1), USAGE, DONE]  # usage: 7 prompt and 40 completion tokens
END = b"0\r\n\r\n"


def framed(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class BodyEnd:
    """A ``test_upstream_framing.RawUpstream`` script: answers each request with ``EVENTS``
    (one chunk each, ``[DONE]`` last), then does ``after`` for the body's end once the test
    says so (``go``: its client has its whole stream by then): ``end`` writes the terminator,
    ``never`` nothing (until the gateway closes the connection), ``too much`` more than
    ``SETTLE_BYTES`` of comments first, ``closes`` closes the connection."""

    def __init__(self, after: str) -> None:
        self.after = after
        self.go = asyncio.Event()

    async def __call__(self, conn: int, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD)
        for event in EVENTS:
            writer.write(framed(event))
            await writer.drain()
        await self.go.wait()
        self.go.clear()
        if self.after == "never":
            await reader.read()
            return False
        if self.after == "closes":
            return False
        if self.after == "too much":
            writer.write(framed(b": padding\n\n" * (http1.SETTLE_BYTES // 11 + 10)))
        writer.write(END)
        return True


async def settle_upstream(make_upstream, after: str = "end") -> tuple[RawUpstream, BodyEnd, str]:
    """(the upstream, its script, its base URL), from the ``raw_upstream`` fixture's ``make_upstream``."""
    body_end = BodyEnd(after)
    upstream = await make_upstream(body_end)
    return upstream, body_end, await upstream.start()


def gateway_config(url: str, max_connections: int = 1000) -> dict:
    config = biz_config(url)
    config["metrics"] = {"token": TOKEN}
    config["providers"]["up"]["max_connections"] = max_connections
    return config


async def stream_text(client: AsyncOpenAI) -> str:
    stream = await client.chat.completions.create(model="up", stream=True, messages=[{"role": "user", "content": "hi"}])
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def idle_is(running, n: int) -> bool:
    return await upstream_connections(running, "idle") == n


async def in_use_is(running, n: int) -> bool:
    return await upstream_connections(running, "in_use") == n


async def upstream_connections(running, state: str) -> float:
    """What ``/metrics`` says of the provider's connections in ``state`` (``idle``, ``in_use``)."""
    async with aiohttp.ClientSession() as session:
        return total(await scrape(session, running.root), "tollway_upstream_connections", provider="up", state=state)


async def test_a_stream_whose_body_ends_after_its_last_event_leaves_its_connection_for_the_next(
        start_gateway, raw_upstream):  # noqa: F811
    upstream, body_end, url = await settle_upstream(raw_upstream)
    running = await start_gateway(gateway_config(url))
    client = AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0)
    async with asyncio.timeout(10):  # the client's stream ends before the upstream's body does
        assert await stream_text(client) == " word0 word1"
    assert upstream.requests == [(1, 1)]
    body_end.go.set()  # the body's end, after the client has its whole stream
    await until(lambda: idle_is(running, 1), what="the connection idle once its body ended")
    async with asyncio.timeout(10):
        assert await stream_text(client) == " word0 word1"
    assert upstream.requests == [(1, 1), (1, 2)]  # the same connection
    body_end.go.set()
    await until(lambda: idle_is(running, 1), what="the connection idle again, still open")
    rows = await ledger_rows(running, "prompt", "completion", "estimated", "status")
    assert rows == [{"prompt": 7, "completion": 40, "estimated": 0, "status": 200}] * 2
    await client.close()


@pytest.mark.parametrize("after", ["never", "too much", "closes"])
async def test_a_body_that_does_not_end_after_its_last_event_has_its_connection_closed(
        after, start_gateway, raw_upstream, monkeypatch):  # noqa: F811
    """The client is not held up; the connection is closed (after ``SETTLE_SECONDS``, at once
    past ``SETTLE_BYTES``, or by the upstream) and no longer counted, and the next request
    gets a new one. Billed at usage either way."""
    monkeypatch.setattr(pool, "SETTLE_SECONDS", 0.3)
    upstream, body_end, url = await settle_upstream(raw_upstream, after)
    running = await start_gateway(gateway_config(url))
    client = AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0)
    async with asyncio.timeout(10):
        assert await stream_text(client) == " word0 word1"
    body_end.go.set()
    await until(lambda: in_use_is(running, 0), what="the connection closed, and no longer counted in use")
    assert await upstream_connections(running, "idle") == 0
    async with asyncio.timeout(10):
        assert await stream_text(client) == " word0 word1"
    assert upstream.requests == [(1, 1), (2, 1)]  # the next request on a new connection
    rows = await ledger_rows(running, "prompt", "completion", "estimated", "status")
    assert rows == [{"prompt": 7, "completion": 40, "estimated": 0, "status": 200}] * 2
    await client.close()


async def test_a_request_that_finds_the_pool_full_takes_a_settling_connections_place(
        start_gateway, raw_upstream, monkeypatch):  # noqa: F811
    """``max_connections: 1`` and a connection that waits (an hour) for a body's end that never
    comes: the next request closes it and goes on a new connection instead of waiting."""
    monkeypatch.setattr(pool, "SETTLE_SECONDS", 3600.0)
    upstream, body_end, url = await settle_upstream(raw_upstream, "never")
    running = await start_gateway(gateway_config(url, max_connections=1))
    client = AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0)
    async with asyncio.timeout(10):
        assert await stream_text(client) == " word0 word1"
        assert await upstream_connections(running, "in_use") == 1  # the settling one holds the only slot
        body_end.go.set()
        assert await stream_text(client) == " word0 word1"
    assert upstream.requests == [(1, 1), (2, 1)]  # the settling one closed, its place taken
    await client.close()


async def test_one_timer_closes_the_late_settlers_and_waits_for_the_next():
    """The pool's one settle timer (not one a stream): at its call, the connections settling
    for ``SETTLE_SECONDS`` are closed, a younger one keeps waiting and the timer is armed for it;
    one whose end comes is idle, taken off the list."""
    from test_http1 import ORIGIN, FakeTransport

    connections = pool.ConnectionPool(limit=4, connect_timeout=1)
    started = []
    for _ in range(3):
        conn = http1.Connection(connections, ORIGIN)
        conn.connection_made(FakeTransport())
        connections.open_count += 1  # (as _connect counts it)
        connections._all.add(conn)
        conn.send(b"POST / HTTP/1.1\r\n\r\n")
        conn.data_received(HEAD + framed(DONE))  # the last event; the body's end still due
        connections.release(conn, settle=True)
        started.append(conn)
    old, young, ending = started
    now = connections.loop.time()
    connections._settling[old] = now - pool.SETTLE_SECONDS - 0.1  # (as if it began that long ago)
    assert connections._settle_timer is not None
    ending.data_received(END)
    assert ending.idle and not ending.closed and list(connections._settling) == [old, young]
    connections._settle_timer.cancel()
    connections._stop_late_settlers()
    assert old.closed and old.transport.aborted and not young.closed and list(connections._settling) == [young]
    assert connections._settle_timer is not None and connections._settle_timer.when() == pytest.approx(
        connections._settling[young] + pool.SETTLE_SECONDS)
    assert connections.open_count == 2  # the young one settling, the ended one idle
    await connections.close()
    assert young.closed and not connections._settling


async def test_a_connection_whose_reading_was_paused_reads_again_to_settle():
    """A reader that leaves while the connection's reading is paused (more than ``HIGH_WATER``
    unread): settling drops what was held and reads again, so the body's end can come."""
    from test_http1 import ORIGIN, FakeTransport

    connections = pool.ConnectionPool(limit=4, connect_timeout=1)
    conn = http1.Connection(connections, ORIGIN)
    transport = FakeTransport()
    conn.connection_made(transport)
    connections.open_count += 1  # (as _connect counts it)
    connections._all.add(conn)
    conn.send(b"POST / HTTP/1.1\r\n\r\n")
    conn.data_received(HEAD + framed(b": x\n\n" * (http1.HIGH_WATER // 5 + 1)) + framed(DONE))
    assert transport.paused
    connections.release(conn, settle=True)
    assert not transport.paused and conn.read_nowait() == b""  # reading again; what was held, dropped
    conn.data_received(END)
    assert conn.idle and not conn.closed and not connections._settling
    await connections.close()
