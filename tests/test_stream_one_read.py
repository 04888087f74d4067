"""An OpenAI stream that arrives whole in one read (a static server's one write), through the
real server with the business plugins on: the exact bytes on the wire (each chunk's size
line too: the held events and the end go out in one write, whose framing does not depend on
timing), and the ledger's tokens and charge from the upstream's usage object. The answers
are OpenAI's shape when asked for usage (``"usage":null`` in every chunk), with the edge
cases of the usage search among them: a null written with a space, an object nested in an
earlier chunk's choice, none at all, ``[DONE]`` in a text. The same answers paced (one event a write) give the
same data; and ``tollway serve`` (uvloop, a real process) sends the same bytes."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import yaml
from business import DEMO, bearer, biz_config, ledger_rows
from test_lifecycle import Server
from test_usage_null_chunks import sse_upstream

HEAD = b'{"id":"chatcmpl-AbCdEfGh","object":"chat.completion.chunk","created":1,"model":"m",'


def chunk(i: int, tail: bytes = b',"usage":null}', text: str = " word") -> bytes:
    return (b"data: " + HEAD + b'"choices":[{"index":0,"delta":{"content":' + orjson.dumps(f"{text}{i}")
            + b'},"logprobs":null,"finish_reason":null}]' + tail + b"\n\n")


USAGE = b"data: " + HEAD + b'"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":40,"total_tokens":47}}\n\n'
DONE = b"data: [DONE]\n\n"
NESTED = (b"data: " + HEAD + b'"choices":[{"index":0,"delta":{"content":"x"},"usage":{"n":1}}],"usage":null}\n\n')
ANSWERS = {
    "nulls": [chunk(i) for i in range(40)],
    "spaced null": [chunk(0), chunk(1, b',"usage": null}'), *(chunk(i) for i in range(2, 40))],
    "nested object": [*(chunk(i) for i in range(20)), NESTED, *(chunk(i) for i in range(20, 40))],
    "no nulls": [chunk(i, b"}") for i in range(40)],
    "[DONE] in a text": [chunk(i, text=" [DONE]") for i in range(40)],
}


async def upstream(serve_upstream, answer: list[bytes], one_write: bool):
    return await sse_upstream(serve_upstream, [*answer, USAGE, DONE], one_write)


def request(include_usage: bool) -> bytes:
    body = {"model": "up", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    raw = orjson.dumps(body)
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer(DEMO)['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n").encode() + raw


async def raw_answer(port: int, include_usage: bool) -> tuple[bytes, bytes]:
    """(head, body) of one chunked answer, the body as sent: size lines, data and terminator."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request(include_usage))
        async with asyncio.timeout(20):
            head = await reader.readuntil(b"\r\n\r\n")
            body = b""
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line, 16)
                body += size_line + await reader.readexactly(size + 2)
                if size == 0:
                    return head, body
    finally:
        writer.close()


def data_of(body: bytes) -> bytes:
    out, rest = b"", body
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if not size:
            return out
        out, rest = out + rest[:size], rest[size + 2:]


def framed(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def expected_data(answer: list[bytes], include_usage: bool, usage_event: bytes) -> tuple[bytes, bytes]:
    """(the events passed as they came, the end): the usage event (the gateway's fields
    spliced in) when the client asked for it, then ``[DONE]``."""
    return b"".join(answer), (usage_event if include_usage else b"") + DONE


def usage_event_billed(extra: dict) -> bytes:
    """The upstream's usage event with the gateway's fields spliced in at the object's start."""
    return USAGE.replace(b'"usage":{', b'"usage":{' + orjson.dumps(extra)[1:-1] + b",")


@pytest.mark.parametrize("name", list(ANSWERS))
@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_one_read_answer_goes_out_in_one_write_byte_for_byte_and_is_billed(name, include_usage, start_gateway,
                                                                                  serve_upstream, tmp_path):
    answer = ANSWERS[name]
    seen = {}
    for one_write in (True, False):
        up = await upstream(serve_upstream, answer, one_write)
        config = biz_config(up.url)
        config["storage"] = {"url": f"sqlite:///{tmp_path}/{one_write}.db"}
        gw = await start_gateway(config)
        head, body = await raw_answer(gw.server.port, include_usage)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nTransfer-Encoding: chunked\r\n" in head
        rows = await ledger_rows(gw, "prompt", "completion", "cost", "status")
        assert rows == [{"prompt": 7, "completion": 40, "cost": 7 * 1 + 40 * 2, "status": 200}]
        seen[one_write] = body
    events, end = expected_data(answer, include_usage, usage_event_billed({"cost": 0.000087}))
    assert seen[True] == framed(events, end)  # the held events, then the end, in one write
    assert data_of(seen[False]) == events + end  # paced: the same data


async def test_tollway_serve_on_uvloop_sends_the_same_bytes(tmp_path, serve_upstream):
    """The real process (uvloop's transport, which writes a list of buffers without joining them):
    the one-read answer framed as above, the paced one with the same data."""
    answer = ANSWERS["nulls"]
    for one_write in (True, False):
        up = await upstream(serve_upstream, answer, one_write)
        config = biz_config(up.url)
        config["server"].update(host="127.0.0.1")
        config["storage"] = {"url": f"sqlite:///{tmp_path}/{one_write}.db"}
        path = tmp_path / f"{one_write}.yaml"
        path.write_text(yaml.safe_dump(config))
        server = Server(path)
        try:
            await server.wait_ready()
            for include_usage in (False, True):
                _, body = await raw_answer(server.port, include_usage)
                events, end = expected_data(answer, include_usage, usage_event_billed({"cost": 0.000087}))
                if one_write:
                    assert body == framed(events, end)
                else:
                    assert data_of(body) == events + end
        finally:
            code, _, err = server.stop()
        assert code == 0, err[-2000:]
