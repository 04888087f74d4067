"""``proxy.wholeanswer.send_answer`` (the core's JSON answers written from their dict of headers)
against a ``web.Response`` of the same status, body and headers sent by ``send_whole`` (aiohttp's
steps, or ``start_whole``'s one write): the same bytes in the same writes, the same state left on
the response and its writer, over generated answers; nothing done when it declines. Then the
answers on the wire, through the real server."""

from __future__ import annotations

import asyncio
import random

import aiohttp.web_response
import orjson
import pytest
from aiohttp import web
from business import DEMO, biz_config
from test_onewrite import DATE, Transport, case, mocked_request, state

import proxy.headshape
import proxy.onewrite
import proxy.wholeanswer
from proxy import hookimpl
from proxy.clientwrite import send_whole
from proxy.onewrite import end_whole
from proxy.wholeanswer import send_answer


@pytest.fixture
def fixed_date(monkeypatch):
    """The same Date both ways (a second may turn between the two)."""
    for module in (aiohttp.web_response, proxy.onewrite, proxy.headshape):
        monkeypatch.setattr(module, "rfc822_formatted_time", lambda: DATE)


def answer_case(rng: random.Random) -> dict:
    """A generated answer as the core sends them: a bytes body, a dict of headers, no cookie,
    compression or forced close (what ``send_answer`` is given), on every kind of request."""
    c = case(rng)
    c.update(multi=False, bytearray=False, no_body=False, reason=None, force_close=False, cookie=False,
             compress=False)
    if rng.random() < 0.1:
        c["pairs"].append((rng.choice(["X-Ok", "x-tollway-cost"]), rng.choice(["a%sb", "50%", "{x}", " ", "\t"])))
    return c


def fields(resp: web.Response) -> dict:
    """The response's own fields, besides those ``state`` compares."""
    return {k: v for k, v in resp.__dict__.items() if k not in ("_headers", "_req", "_payload_writer", "_state")}


async def theirs(c: dict) -> tuple[dict, dict]:
    request, transport, writer, heard = mocked_request(c, asyncio.get_running_loop())
    resp = web.Response(status=c["status"], body=c["body"], headers=headers_of(c))
    error = None
    try:
        await send_whole(resp, request, 30.0)
    except Exception as exc:  # noqa: BLE001 (compared: both ways must raise the same)
        error = exc
    return state(resp, writer, transport, heard, error), fields(resp)


async def mine(c: dict) -> tuple[dict, dict] | None:
    request, transport, writer, heard = mocked_request(c, asyncio.get_running_loop())
    output_size, buffer_size, length = writer.output_size, writer.buffer_size, writer.length
    sent = send_answer(request, c["status"], headers_of(c), c["body"])
    if sent is None:  # declined: nothing written, nothing changed
        assert transport.writes == [] and not writer._headers_written
        assert (writer.output_size, writer.buffer_size, writer.length) == (output_size, buffer_size, length)
        return None
    resp, sent_writer = sent
    assert sent_writer is writer
    end_whole(resp, writer)
    return state(resp, writer, transport, heard, None), fields(resp)


def headers_of(c: dict) -> dict:
    headers = dict(c["pairs"])
    return {**headers, "Content-Type": "application/json"} if c["content_type"] else headers


@pytest.mark.parametrize("writev", [False, True])
async def test_the_answer_is_the_one_a_web_response_sends(fixed_date, monkeypatch, writev):
    """``writev``: the transport is one ``send_answer`` hands the head and body to as they are
    (uvloop's ``writelines``), not through aiohttp's join: the same bytes in one call."""
    monkeypatch.setattr(proxy.wholeanswer, "_WRITEV", (Transport,) if writev else ())
    monkeypatch.setattr(Transport, "writelines", lambda self, chunks: self.writes.append(
        ("writelines", tuple(bytes(c) for c in chunks))))
    rng = random.Random(1205)
    took = handed = 0
    for i in range(3000):
        c = answer_case(rng)
        ours = await mine(c)
        if ours is not None:
            took += 1
            writes = ours[0]["writes"]
            if writes and writes[0][0] == "writelines":
                handed += 1
                assert len(writes) == 1
                ours[0]["writes"] = [("write", b"".join(writes[0][1]))]
            assert ours == await theirs(c), (i, c)
    assert 1000 < took < 3000  # both ways were taken, its own mostly
    assert handed == (took if writev else 0)


class Headed:
    """Adds headers to every answer."""

    def __init__(self, extra: dict[str, str]) -> None:
        self.extra = extra

    @hookimpl
    def tollway_admit(self, call) -> None:
        call.response.headers.update(self.extra)


async def raw_post(running, body: dict, version: str = "1.1", head: bytes = b"") -> bytes:
    """The raw answer to one chat request on its own connection (read to its Content-Length)."""
    reader, writer = await asyncio.open_connection(running.server.host, running.server.port)
    data = orjson.dumps(body)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/%s\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                     b"Content-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                     % (version.encode(), DEMO.encode(), head, len(data), data))
        async with asyncio.timeout(30):  # a hang guard
            answer_head = await reader.readuntil(b"\r\n\r\n")
            size = int(answer_head.split(b"\r\nContent-Length: ")[1].split(b"\r\n")[0])
            return answer_head + await reader.readexactly(size)
    finally:
        writer.close()


CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
LIMITED = [{"name": "demo", "key": DEMO, "credits": 5.0, "limits": {"rpm": 1000, "tpm": 1000000}}]


@pytest.mark.parametrize(("version", "head", "connection"), [
    ("1.1", b"", None), ("1.1", b"Connection: close\r\n", b"close"), ("1.0", b"Connection: keep-alive\r\n",
                                                                       b"keep-alive"), ("1.0", b"", None)])
async def test_the_json_answer_on_the_wire(start_gateway, version, head, connection):
    running = await start_gateway(biz_config(keys=LIMITED),
                                  plugins=[Headed({"X-Percent": "50%s %d %%", "X-Tab": "a\tb", "X-Empty": ""})])
    raw = await raw_post(running, CHAT, version, head)
    answer_head, _, body = raw.partition(b"\r\n\r\n")
    lines = answer_head.split(b"\r\n")
    assert lines[0] == f"HTTP/{version} 200 OK".encode()
    names = [line.split(b": ", 1)[0] for line in lines[1:]]
    # the plugins' headers in the order they were added, then the core's, then aiohttp's
    assert names[0] == b"x-tollway-request-id"
    assert names[-4 - (connection is not None):] == [b"Content-Type", b"Content-Length", b"Date", b"Server"] + (
        [b"Connection"] if connection else [])
    assert b"X-Percent: 50%s %d %%" in lines and b"X-Tab: a\tb" in lines and b"X-Empty: " in lines
    assert b"x-ratelimit-remaining-requests: 999" in lines and any(n == b"x-tollway-cost" for n in names)
    assert f"Content-Length: {len(body)}".encode() in lines
    if connection:
        assert b"Connection: " + connection in lines
    assert orjson.loads(body)["object"] == "chat.completion"


@pytest.mark.parametrize("value", ["evil\r\nSet-Cookie: x=1", "nul\x00", "é ☃"])
async def test_a_header_the_one_write_declines_is_sent_as_before(start_gateway, value):
    running = await start_gateway(biz_config(), plugins=[Headed({"X-Odd": value})])
    raw = await raw_post(running, CHAT)
    if value == "é ☃":  # aiohttp writes it (UTF-8)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and "\r\nX-Odd: é ☃\r\n".encode() in raw
    else:  # aiohttp refuses it: the error answer, without the header
        assert raw.startswith(b"HTTP/1.1 500 ") and b"X-Odd" not in raw and b"Set-Cookie" not in raw
