"""``UpstreamClient.open``'s first_byte deadline (``Deadline`` written out in it): a head that
does not come in time is a 504 and leaves the task as it was (not cancelled, nothing pending);
a cancellation from outside stays a cancellation; an answer in time leaves no timer behind."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from proxy import ProxyError
from proxy.upstream import UpstreamClient, UpstreamRequest


def client_with(first_byte: float, total: float = 5.0) -> UpstreamClient:
    timeouts = SimpleNamespace(connect=2.0, first_byte=first_byte, idle=2.0, total=total)
    return UpstreamClient("up", SimpleNamespace(timeouts=timeouts, max_connections=4))


async def silent_server() -> tuple[asyncio.Server, str]:
    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(30)

    server = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


@pytest.mark.parametrize(("first_byte", "total", "code"), [(0.05, 5.0, "upstream_timeout_first_byte"),
                                                          (2.0, 0.05, "upstream_timeout_total")])
async def test_a_head_that_does_not_come_is_a_timeout_and_the_task_is_not_left_cancelled(first_byte, total, code):
    server, url = await silent_server()
    client = client_with(first_byte, total)
    await client.start()
    try:
        with pytest.raises(ProxyError) as caught:
            await client.open(UpstreamRequest(url, b"{}"))
        assert caught.value.status == 504 and caught.value.code == code
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0)  # no cancellation pending: this await returns
    finally:
        await client.close()
        server.close()


async def test_a_cancellation_from_outside_stays_a_cancellation():
    server, url = await silent_server()
    client = client_with(2.0)
    await client.start()
    try:
        opening = asyncio.ensure_future(client.open(UpstreamRequest(url, b"{}")))
        await asyncio.sleep(0.05)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        assert opening.cancelled()
    finally:
        await client.close()
        server.close()


async def test_an_answer_in_time_leaves_no_timer_to_cancel_the_task_later():
    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server = await asyncio.start_server(answers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = client_with(0.1)
    await client.start()
    try:
        answer = await client.open(UpstreamRequest(f"http://127.0.0.1:{port}/v1/x", b"{}"))
        assert answer.status == 200 and await answer.read_all() == b"ok"
        answer.release()
        await asyncio.sleep(0.2)  # past the first_byte deadline: nothing cancels this task
    finally:
        await client.close()
        server.close()
