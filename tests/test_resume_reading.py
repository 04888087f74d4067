"""``ClientConnection.resume_reading`` returns at once where aiohttp's would do nothing
(``proxy.connection.HELD_ONLY``): every time it takes that shortcut, aiohttp's own
``resume_reading`` run in its place changes nothing that can be seen (no request parsed, no flag
changed, the transport reading as before), over conversations that make aiohttp pause: a body
past the reader's high-water mark, more pipelined requests than its queue holds, chunked bodies,
bodies left unread, a request the parser refuses; and the raw answers are aiohttp's with the
shortcut on and off."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp.base_protocol import BaseProtocol
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE
from conftest import base_config
from test_dispatch import normal, post, read_answer
from test_server_loop import CONVERSATIONS, GET_HEALTH

import proxy.connection
from proxy.connection import ClientConnection, ClientServer

#: A chat body larger than the request reader's high-water mark (twice ``read_bufsize``, made 1 KiB
#: here: ``small_reads``): aiohttp pauses reading.
BIG = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "word " * 20_000}]})

HELD = [
    [post("/v1/chat/completions", BIG), GET_HEALTH],  # its reader pauses the parser and the transport
    [GET_HEALTH] * (MAX_MSG_QUEUE_SIZE + 8),  # the parser pauses between messages: the queue is full
    [post("/v1/chat/completions", BIG)] * 2 + [GET_HEALTH] * (MAX_MSG_QUEUE_SIZE + 2),
]


def _seen(conn: ClientConnection) -> tuple:
    """What a ``resume_reading`` could change, as far as anything outside can see it."""
    transport = conn.transport
    return (conn._request_count, len(conn._messages), conn._reading_paused, conn._buffer_paused, conn._upgraded,
            conn._force_close, conn._close, conn._head_bytes, conn._head_start, conn._timer_kind,
            transport is not None and transport.is_reading(), transport is not None and transport.is_closing())


class Shadow:
    """Runs ``ClientConnection.resume_reading``; where it returned without aiohttp's, runs aiohttp's
    after it and checks that that changed nothing. (Inside aiohttp's own resume, whose parse of the
    bytes it kept ends a body, ``feed_eof``'s resume may leave the transport paused: the outer
    call, as it returns, resumes it when neither flag is set, as the inner would have.)"""

    def __init__(self) -> None:
        self.shortcuts = 0
        self.held = 0
        self.went_on = False
        self.depth = 0  # aiohttp's resume_reading calls under way

    def aiohttps(self, conn: ClientConnection, resume_parser: bool = True) -> None:
        self.went_on = True
        self.depth += 1
        try:
            AIOHTTPS(conn, resume_parser)
        finally:
            self.depth -= 1
        if self.depth == 0 and not (conn._reading_paused or conn._buffer_paused) and conn.transport is not None:
            assert conn.transport.is_reading() or conn.transport.is_closing()

    def __call__(self, conn: ClientConnection, resume_parser: bool = True) -> None:
        self.went_on = False
        before = _seen(conn)
        OURS(conn, resume_parser)
        if self.went_on:
            self.held += 1
            return
        self.shortcuts += 1
        assert _seen(conn) == before
        AIOHTTPS(conn, resume_parser)
        after = _seen(conn)
        if self.depth:
            after, before = after[:10] + after[11:], before[:10] + before[11:]
        assert after == before, (before, after)


OURS = ClientConnection.resume_reading
AIOHTTPS = BaseProtocol.resume_reading


async def converse(port: int, requests: list[bytes], pipelined: bool) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        if pipelined:
            writer.write(b"".join(requests))
        for request in requests:
            if not pipelined and not reader.at_eof():
                writer.write(request)
            async with asyncio.timeout(20):
                answers.append(normal(await read_answer(reader, request.startswith(b"HEAD "))))
        return answers
    finally:
        writer.close()


def small_reads(monkeypatch) -> None:
    """Client connections whose request bodies pause reading past 2 KiB (aiohttp's ``read_bufsize``)."""
    monkeypatch.setattr(ClientServer, "__call__", lambda server: ClientConnection(
        server, loop=server._loop, **{**server._kwargs, "read_bufsize": 1024}))


async def answers(start_gateway, upstream: str) -> list[list[bytes]]:
    gw = await start_gateway(base_config(upstream, server={"access_log": "off", "max_body_bytes": 1_000_000}))
    port = gw.server.port
    return [await converse(port, requests, pipelined) for pipelined in (True, False)
            for requests in CONVERSATIONS + HELD]


async def test_the_shortcut_is_taken_only_where_aiohttps_resume_does_nothing(start_gateway, mock_upstream,
                                                                              monkeypatch):
    small_reads(monkeypatch)
    shadow = Shadow()
    # (aiohttp passes resume_parser by name)
    monkeypatch.setattr(ClientConnection, "resume_reading",
                        lambda conn, resume_parser=True: shadow(conn, resume_parser))
    monkeypatch.setattr(BaseProtocol, "resume_reading",
                        lambda conn, resume_parser=True: shadow.aiohttps(conn, resume_parser))
    pauses = []
    pause = BaseProtocol.pause_reading
    monkeypatch.setattr(BaseProtocol, "pause_reading", lambda conn: (pauses.append(1), pause(conn)))
    got = await answers(start_gateway, mock_upstream.url)
    assert pauses  # (a body past the high-water mark)
    assert shadow.shortcuts > 2 * len(CONVERSATIONS)  # (every request with a body: its reader's read and end)
    assert shadow.held  # the pauses were made, and resumed through aiohttp
    firsts = {answer.split(b"\r\n", 1)[0] for conversation in got for answer in conversation}
    assert b"HTTP/1.1 200 OK" in firsts


async def test_the_answers_are_aiohttps_with_the_shortcut_on_and_off(start_gateway, mock_upstream, monkeypatch):
    small_reads(monkeypatch)
    monkeypatch.setattr(proxy.connection, "HELD_ONLY", False)
    theirs = await answers(start_gateway, mock_upstream.url)
    monkeypatch.setattr(proxy.connection, "HELD_ONLY", True)
    ours = await answers(start_gateway, mock_upstream.url)
    for requests, mine, aiohttps in zip((CONVERSATIONS + HELD) * 2, ours, theirs, strict=True):
        assert mine == aiohttps, [r[:60] for r in requests]
    assert [a.split(b"\r\n", 1)[0] for a in ours[len(CONVERSATIONS)]] == [b"HTTP/1.1 200 OK"] * 2
