"""A connection's request loop (``proxy/server_loop.py``) awaits each handler in the
connection's own task, and answers exactly as aiohttp's ``start`` (a task per request) does:
the same raw bytes for pipelined requests, chunked bodies, ``Expect: 100-continue``, HEAD,
keep-alive and close, bodies left unread and requests the parser refuses; a context variable
a handler sets is not seen by the next request on the connection, as with aiohttp; and a
request cut at shutdown still gets its 503."""

from __future__ import annotations

import asyncio
import contextvars

import orjson
from conftest import base_config
from test_dispatch import CHAT, STREAM, UP_WHOLE, normal, post, read_answer

import proxy.server_loop
from proxy import hookimpl

CHUNKED = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                                                          for part in (CHAT[:10], CHAT[10:])) + b"0\r\n\r\n")
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD_HEALTH = b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
UNREAD = (b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
          % (len(CHAT), CHAT))  # (a 404 that never reads its body: the loop reads it away)
BAD = b"GARBAGE\r\n\r\n"

# Each: the requests written on one connection in one write (pipelined), the answers read in order.
CONVERSATIONS = [
    [post("/v1/chat/completions")] * 3,
    [post("/v1/chat/completions"), post("/v1/chat/completions", STREAM), GET_HEALTH],
    [post("/v1/chat/completions", UP_WHOLE), HEAD_HEALTH, post("/v1/embeddings", orjson.dumps(
        {"model": "echo", "input": "some words"}))],
    [CHUNKED, CHUNKED, GET_HEALTH],
    [post("/v1/chat/completions", head="Expect: 100-continue\r\n"), GET_HEALTH],
    [UNREAD, GET_HEALTH, UNREAD],
    [post("/v1/chat/completions", b"{not json"), post("/v1/chat/completions")],
    [post("/v1/chat/completions", head="Connection: close\r\n"), GET_HEALTH],
    [post("/v1/chat/completions", version="1.0"), GET_HEALTH],
    [post("/v1/chat/completions", head="Connection: keep-alive\r\n", version="1.0"), GET_HEALTH],
    [post("/v1/chat/completions", b"x" * 3000), GET_HEALTH],
    [GET_HEALTH, BAD, GET_HEALTH],
    [b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", b"DELETE /v1/embeddings HTTP/1.1\r\nHost: x\r\n\r\n"],
]


async def converse(port: int, requests: list[bytes], pipelined: bool) -> list[bytes]:
    """The answers to ``requests`` on one connection (all written at once when ``pipelined``,
    else each after the previous answer); b"" for each after the server closed."""
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


async def all_answers(start_gateway, monkeypatch, upstream: str, inline: bool) -> list[list[bytes]]:
    monkeypatch.setattr(proxy.server_loop, "ENABLED", inline)
    gw = await start_gateway(base_config(upstream, server={"access_log": "off", "max_body_bytes": 2000}))
    port = gw.server.port
    return [await converse(port, requests, pipelined) for pipelined in (True, False) for requests in CONVERSATIONS]


async def test_the_loop_answers_as_aiohttps_own(start_gateway, mock_upstream, monkeypatch):
    theirs = await all_answers(start_gateway, monkeypatch, mock_upstream.url, inline=False)
    ours = await all_answers(start_gateway, monkeypatch, mock_upstream.url, inline=True)
    for requests, mine, aiohttps in zip(CONVERSATIONS * 2, ours, theirs, strict=True):
        assert mine == aiohttps, ([r[:60] for r in requests], mine, aiohttps)
    firsts = {answer.split(b"\r\n", 1)[0] for conversation in ours for answer in conversation}
    assert {b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 100 Continue", b"HTTP/1.1 400 Bad Request",
            b"HTTP/1.1 404 Not Found", b"HTTP/1.1 405 Method Not Allowed",
            b"HTTP/1.1 413 Request Entity Too Large", b""} <= firsts


class TaskRecorder:
    """Records the task each request's handler runs in, and the connection's (``request.task``)."""

    def __init__(self) -> None:
        self.tasks: list[tuple[asyncio.Task | None, asyncio.Task | None]] = []

    @hookimpl
    async def tollway_finish(self, call):
        self.tasks.append((asyncio.current_task(), call.request.task if call.request is not None else None))


async def test_the_requests_of_a_connection_run_in_its_own_task(start_gateway, mock_upstream):
    recorder = TaskRecorder()
    gw = await start_gateway(base_config(mock_upstream.url), plugins=[recorder])
    answers = await converse(gw.server.port, [post("/v1/chat/completions"), post("/v1/chat/completions", STREAM),
                                              post("/v1/chat/completions")], pipelined=False)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert len(recorder.tasks) == 3
    connection_task = recorder.tasks[0][1]
    assert connection_task is not None
    assert all(task is connection_task and request_task is connection_task for task, request_task in recorder.tasks)


SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("tollway_test_seen", default="(unset)")


class ContextSetter:
    """Sets a context variable in each request, after noting what it found there."""

    def __init__(self) -> None:
        self.found: list[str] = []

    @hookimpl
    async def tollway_authenticate(self, call):
        self.found.append(SEEN.get())
        SEEN.set(f"set by request {len(self.found)}")
        return None


async def test_a_context_variable_a_request_sets_is_not_seen_by_the_next(start_gateway, mock_upstream,
                                                                          monkeypatch):
    for inline in (False, True):
        monkeypatch.setattr(proxy.server_loop, "ENABLED", inline)
        setter = ContextSetter()
        gw = await start_gateway(base_config(mock_upstream.url), plugins=[setter])
        for pipelined in (False, True):
            answers = await converse(gw.server.port, [post("/v1/chat/completions")] * 4, pipelined)
            assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 4
        assert setter.found == ["(unset)"] * 8, inline


async def test_an_answer_sent_to_its_end_is_finished_without_finish_response(start_gateway, mock_upstream,
                                                                             monkeypatch):
    """``handle_request``: a whole answer (send_whole) and a stream (its write_eof) are finished
    at once; an answer aiohttp still has to send (a 404 raised as HTTPException, /health's
    returned Response) goes through ``finish_response`` (ClientConnection's, which answers the
    404 in the OpenAI error shape)."""
    from proxy.connection import ClientConnection

    finished = []
    real = ClientConnection.finish_response

    async def counted(self, request, resp, start_time):
        finished.append(resp.status)
        return await real(self, request, resp, start_time)

    monkeypatch.setattr(ClientConnection, "finish_response", counted)
    gw = await start_gateway(base_config(mock_upstream.url))
    answers = await converse(gw.server.port, [post("/v1/chat/completions"), post("/v1/chat/completions", UP_WHOLE),
                                              UNREAD, GET_HEALTH], pipelined=False)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK",
                                                         b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK"]
    assert b'"code":"unknown_endpoint"' in answers[2].replace(b" ", b"")
    assert b"data: [DONE]" in answers[1]
    assert finished == [404, 200]
