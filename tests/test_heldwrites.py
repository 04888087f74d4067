"""Writes held to the end of the event loop's pass (proxy/heldwrites.py).

What goes through them (upstream requests; a client answer's last write, on uvloop's
transports), and that they lose and reorder nothing: answers to pipelined requests in order
when the next one is written by aiohttp itself, a ``Connection: close`` answer whole, a request
held on a connection the upstream closed meanwhile sent on a new one (it never went out), the
providers a reload makes holding theirs too, a shutdown flushing what is held. The client side's
holding runs on uvloop's transports (as ``tollway serve`` does): this module's tests run on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import aiohttp
import openai
import orjson
import pytest
import uvloop
from conftest import base_config
from test_dispatch import post
from test_http1 import call
from test_server_loop import GET_HEALTH, converse

from proxy import http1
from proxy.heldwrites import HeldWrites
from proxy.pool import ConnectionPool
from proxy.reload import RELOADER_KEY

CHAT = orjson.dumps({"model": "up", "messages": [{"role": "user", "content": "hi"}]})
ONE_WRITE_STREAM = orjson.dumps({"model": "up", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                                 "mock": {"one_write": True, "chunks": 6}})


def held_config(upstream: str, **overrides) -> dict:
    """``base_config`` whose upstream may take 5 s to answer (``another_call_in_flight``)."""
    config = base_config(upstream, **overrides)
    config["providers"]["up"]["timeouts"]["first_byte"] = 10
    return config


@pytest.fixture(scope="module")
def event_loop_policy():
    return uvloop.EventLoopPolicy()


class Spy:
    """Counts what the gateway's HeldWrites is handed: upstream requests and client writes."""

    def __init__(self, monkeypatch) -> None:
        self.upstream = self.client = 0
        self.flushes: list[int] = []
        hold, flush = HeldWrites.hold, HeldWrites.flush

        def spy_hold(held: HeldWrites, write, data) -> None:
            if getattr(write, "__name__", "") == "_write_held":
                self.upstream += 1
            else:
                self.client += 1
            hold(held, write, data)

        def spy_flush(held: HeldWrites) -> None:
            if len(held):
                self.flushes.append(len(held))
            flush(held)

        monkeypatch.setattr(HeldWrites, "hold", spy_hold)
        monkeypatch.setattr(HeldWrites, "flush", spy_flush)


@contextlib.asynccontextmanager
async def another_call_in_flight(running, spy: Spy):
    """A call whose upstream answers after 5 s, in flight while the block runs: writes are held
    only while more than one call is in flight (``HeldWrites``' ``in_flight``). The spy's counts
    start from zero inside the block."""
    async def slow() -> int:
        async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", json={
                "model": "up", "messages": [{"role": "user", "content": "slow"}], "mock": {"delay": 5}}) as r:
            await r.read()
            return r.status

    task = asyncio.create_task(slow())
    async with asyncio.timeout(4):
        while not running.gw.inflight.calls or spy.upstream < 1:
            await asyncio.sleep(0.01)
    spy.upstream = spy.client = 0
    spy.flushes.clear()
    try:
        yield
    finally:
        assert await task == 200


async def test_upstream_requests_and_answers_last_writes_are_held_and_arrive_whole(start_gateway, mock_upstream,
                                                                                  monkeypatch):
    spy = Spy(monkeypatch)
    gw = await start_gateway(held_config(mock_upstream.url))
    client = openai.AsyncOpenAI(base_url=gw.url, api_key="unused", max_retries=0)

    async def whole() -> str:
        answer = await client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
        return answer.choices[0].message.content

    async def streamed() -> str:
        stream = await client.chat.completions.create(
            model="up", stream=True, messages=[{"role": "user", "content": "hi"}],
            extra_body={"mock": {"one_write": True, "chunks": 6}})
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    try:
        async with another_call_in_flight(gw, spy):
            texts = await asyncio.gather(*[whole() for _ in range(8)], *[streamed() for _ in range(8)])
            assert spy.upstream == 16  # every upstream request
            assert spy.client == 16  # every answer's last write: the whole JSON, the one-write stream's end
            assert sum(spy.flushes) == 32  # each made (at the end of its pass), none left behind
            assert len(gw.gw.held_writes) == 0
    finally:
        await client.close()
    assert all(texts) and len(set(texts[:8])) == 1 and len(set(texts[8:])) == 1, texts


async def test_one_call_in_flight_is_written_at_once(start_gateway, mock_upstream, monkeypatch):
    """Nothing to share a pass with: no pass's wait added to its latency."""
    spy = Spy(monkeypatch)
    gw = await start_gateway(held_config(mock_upstream.url))
    async with openai.AsyncOpenAI(base_url=gw.url, api_key="unused", max_retries=0) as client:
        for extra in ({}, {"stream": True, "extra_body": {"mock": {"one_write": True}}}):
            answer = await client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}],
                                                          **extra)
            if extra:
                assert [c async for c in answer]
            else:
                assert answer.choices[0].message.content
    assert (spy.upstream, spy.client, spy.flushes) == (2, 2, [])  # handed over, and made at once


async def test_a_pipelined_request_answered_by_aiohttp_comes_after_the_held_answer(start_gateway, mock_upstream,
                                                                                 monkeypatch):
    """The chat answer's last write is held; /health's answer is aiohttp's own, written in the
    same pass: ``serve_requests`` flushes before it takes the pipelined request."""
    spy = Spy(monkeypatch)
    gw = await start_gateway(held_config(mock_upstream.url))
    async with another_call_in_flight(gw, spy):
        for first in (post("/v1/chat/completions", CHAT), post("/v1/chat/completions", ONE_WRITE_STREAM)):
            answers = await converse(gw.server.port, [first, GET_HEALTH, first, GET_HEALTH], pipelined=True)
            assert [b"chat.completion" in a for a in answers] == [True, False, True, False], answers
            assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers)
            assert b'"status"' in answers[1], answers[1]
        assert spy.client == 4 and sum(spy.flushes) == 8  # (the upstream requests' too)


async def test_a_connection_close_answer_arrives_whole(start_gateway, mock_upstream, monkeypatch):
    spy = Spy(monkeypatch)
    gw = await start_gateway(held_config(mock_upstream.url))
    async with another_call_in_flight(gw, spy):
        await answered_whole_then_closed(gw)
        assert spy.client == 2 and sum(spy.flushes) == 4


async def answered_whole_then_closed(gw) -> None:
    for body in (CHAT, ONE_WRITE_STREAM):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
        writer.write(post("/v1/chat/completions", body, head="Connection: close\r\n"))
        async with asyncio.timeout(20):
            raw = await reader.read()  # to the server's close
        writer.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
        if body is CHAT:
            assert orjson.loads(rest)["object"] == "chat.completion"
        else:
            assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


class ClosingUpstream:
    """A plain-socket HTTP upstream on a thread (so it acts while the test's loop is blocked):
    answers each request ``ok``; ``close_idle()`` closes every connection it holds."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[tuple[int, bytes]] = []  # (connection number, body)
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, len(self._conns)), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(data) < length:
                    data += conn.recv(65536)
                self.seen.append((number, data[:length]))
                data = data[length:]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return

    def close_idle(self) -> None:
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # (the FIN now; close alone waits for the thread's recv)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.listener.close()
        self.close_idle()


@pytest.mark.parametrize("held", [True, False])
async def test_a_request_held_on_a_connection_the_upstream_closed_goes_on_a_new_one(held):
    """The upstream closes an idle connection; its FIN has arrived (the loop has not read it yet)
    when a POST takes the connection. Held, the request had not gone out when the close is seen:
    NotSent, and the pool sends it on a new connection, once. Written at once (no holder), it
    went into the closed connection: the keep-alive race, and a POST is not sent twice (502)."""
    upstream = ClosingUpstream()
    loop = asyncio.get_running_loop()
    pool = ConnectionPool(limit=4, connect_timeout=2, held_writes=HeldWrites(loop) if held else None)
    try:
        url = f"http://127.0.0.1:{upstream.port}/"
        assert await call(pool, url, b"first") == b"ok"
        upstream.close_idle()
        time.sleep(0.2)  # (blocking: the FIN arrives, the loop does not run to read it)
        if held:
            assert await call(pool, url, b"second") == b"ok"
            assert upstream.seen == [(1, b"first"), (2, b"second")]  # on a new connection, once
        else:
            with pytest.raises(http1.UpstreamClosed):
                await call(pool, url, b"second")
            assert upstream.seen == [(1, b"first")]
    finally:
        await pool.close()
        upstream.close()


async def test_writes_wait_only_while_another_call_is_in_flight():
    in_flight: list[str] = ["this one"]
    held = HeldWrites(asyncio.get_running_loop(), in_flight)
    made: list[str] = []
    held.hold(made.append, "alone: at once")
    in_flight.append("another")
    held.hold(made.append, "with another: held")
    assert made == ["alone: at once"] and len(held) == 1
    await asyncio.sleep(0)
    assert made == ["alone: at once", "with another: held"]


async def test_writes_are_made_in_order_after_the_callbacks_already_scheduled():
    loop = asyncio.get_running_loop()
    held = HeldWrites(loop)
    order: list[str] = []
    loop.call_soon(order.append, "scheduled before")
    held.hold(order.append, "first")
    held.hold(order.append, "second")

    def closed(_data: str) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    held.hold(closed, "to a closed transport")
    held.hold(order.append, "third")
    loop.call_soon(order.append, "scheduled after")
    assert order == [] and len(held) == 4
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["scheduled before", "first", "second", "third", "scheduled after"]
    held.hold(order.append, "flushed early")
    held.flush()  # (serve_requests before a pipelined request or a close)
    assert order[-1] == "flushed early" and len(held) == 0


async def test_providers_a_reload_makes_hold_their_writes_and_a_shutdown_flushes(start_gateway, mock_upstream,
                                                                               monkeypatch, tmp_path):
    spy = Spy(monkeypatch)
    config = held_config(mock_upstream.url, storage={"url": f"sqlite:///{tmp_path}/reload.db"})
    running = await start_gateway(config)
    config["providers"]["up"]["timeouts"]["first_byte"] = 9  # a changed provider: made again
    before = running.gw.providers["up"]
    await running.server.app[RELOADER_KEY].apply(config)
    after = running.gw.providers["up"]
    assert after is not before and after.upstream.held_writes is running.gw.held_writes
    client = openai.AsyncOpenAI(base_url=running.url, api_key="unused", max_retries=0)
    try:
        answer = await client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert answer.choices[0].message.content and spy.upstream == 1
    written: list[bytes] = []
    running.gw.held_writes._in_flight = None  # (held whatever is in flight)
    running.gw.held_writes.hold(written.append, b"last")
    await running.gw.close()  # (a loop that stops after it runs no other pass)
    assert written == [b"last"]
