"""``UpstreamClient.open``'s first_byte deadline (one ``DeadlineQueue`` timer for a provider's
requests): a head that does not come in time is a 504 and leaves the task as it was (not
cancelled, nothing pending); a cancellation from outside stays a cancellation; an answer in
time leaves nothing behind to cancel its task later; among many requests at once each times
out by its own deadline, and only those whose head did not come."""

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


async def test_many_requests_at_once_each_time_out_by_their_own_deadline_only_if_unanswered():
    """Requests started apart share one timer: the unanswered ones get their 504 (none before its
    own deadline: each a first_byte after its start), the answered ones their answer, and tasks
    that go on after their answer are not cancelled when the others' deadlines pass."""
    answered = {1, 3, 4}

    async def some_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # (an answered request's connection is reused)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)  # the body, {}
            if int(head.split(b" ")[1].rsplit(b"/", 1)[1]) not in answered:
                await asyncio.sleep(30)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(some_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = client_with(0.3)
    client.config.max_connections = 8
    await client.start()
    loop = asyncio.get_running_loop()

    async def one(i: int) -> tuple[str, float]:
        await asyncio.sleep(0.05 * i)  # started apart: deadlines apart
        started = loop.time()
        try:
            answer = await client.open(UpstreamRequest(f"http://127.0.0.1:{port}/v1/{i}", b"{}"))
        except ProxyError as exc:
            return exc.code, loop.time() - started
        body = await answer.read_all()
        answer.release()
        await asyncio.sleep(0.5)  # past every deadline: nothing cancels this task
        return body.decode(), loop.time() - started

    try:
        async with asyncio.timeout(10):
            results = await asyncio.gather(*(one(i) for i in range(6)))
        for i, (outcome, took) in enumerate(results):
            assert outcome == ("ok" if i in answered else "upstream_timeout_first_byte"), (i, outcome)
            if i not in answered:
                assert took >= 0.3 - 0.002, (i, took)  # (the loop's clock runs in milliseconds)
    finally:
        await client.close()
        server.close()


async def test_a_shorter_deadline_after_longer_ones_fires_on_its_own_timer():
    """A deadline earlier than one already watched (a timeout shortened on the way) is not
    held up behind the later one."""
    from proxy.deadline import DeadlineQueue

    loop = asyncio.get_running_loop()
    queue = DeadlineQueue(loop)
    fired_at: dict[str, float] = {}

    async def waits(name: str, seconds: float) -> list:
        record = queue.watch(asyncio.current_task(), loop.time() + seconds)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            fired_at[name] = loop.time()
            asyncio.current_task().uncancel()
        return record

    long = asyncio.ensure_future(waits("long", 0.5))
    await asyncio.sleep(0)
    short = asyncio.ensure_future(waits("short", 0.05))
    async with asyncio.timeout(10):
        records = await asyncio.gather(long, short)
    assert all(record[1] for record in records) and fired_at["short"] < fired_at["long"]
    queue.close()
