"""The mock upstream's knobs (chunks, chunk size, TTFT, delays), read through the
load generator's own HTTP client, which these tests check along the way.

Time is only ever bounded from below (the mock must wait at least that long);
nothing here asserts that something is fast.
"""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from benchmarks import mock_upstream
from benchmarks.httpclient import Connection, build_request
from benchmarks.mock_upstream import MockSettings, make_app

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def mock(aiohttp_server):
    async def start(settings: MockSettings | None = None):
        server = await aiohttp_server(make_app(settings or MockSettings()))
        conn = await Connection.open("127.0.0.1", server.port)
        url = str(server.make_url("/v1/chat/completions"))

        async def send(**body):
            payload = build_request(url, orjson.dumps({"model": "m", "messages": MESSAGES, **body}))
            return await conn.request(payload, timeout=10)

        return send

    return start


def sse_payloads(raw: bytes) -> list[bytes]:
    return [block[len(b"data: "):] for block in raw.split(b"\n\n") if block.startswith(b"data: ")]




async def test_non_stream_has_chunks_times_size_characters(aiohttp_client):
    client = await aiohttp_client(make_app(MockSettings()))
    r = await client.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES,
                                                         "mock": {"chunks": 5, "chunk_size": 7}})
    body = await r.json()
    assert r.status == 200
    assert len(body["choices"][0]["message"]["content"]) == 35
    assert body["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("usage", [False, True])
async def test_stream_has_the_asked_chunks_each_of_the_asked_size(aiohttp_client, usage):
    client = await aiohttp_client(make_app(MockSettings()))
    body = {"model": "m", "messages": MESSAGES, "stream": True, "mock": {"chunks": 6, "chunk_size": 11}}
    if usage:
        body["stream_options"] = {"include_usage": True}
    r = await client.post("/v1/chat/completions", json=body)
    payloads = sse_payloads(await r.read())
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert contents[0] == ""  # the role chunk
    assert [len(c) for c in contents[1:7]] == [11] * 6
    assert chunks[7]["choices"][0]["finish_reason"] == "stop"
    assert len(chunks) == 8 + usage
    if usage:
        assert chunks[-1]["usage"]["completion_tokens"] == 6


async def test_server_defaults_apply_and_requests_override_them(mock):
    send = await mock(MockSettings(chunks=3, chunk_size=4))
    default = await send(stream=True)
    assert default.status == 200
    assert default.events == 3 + 3  # role, 3 contents, finish, [DONE]
    override = await send(stream=True, mock={"chunks": 10})
    assert override.events == 10 + 3
    assert override.tail.endswith(b"data: [DONE]\n\n")


async def test_ttft_delays_the_first_event_not_the_headers(mock):
    send = await mock()
    res = await send(stream=True, mock={"ttft": 0.05, "chunks": 2})
    assert res.status == 200
    assert res.first_body_at - res.sent >= 0.045
    assert res.first_body_at >= res.head_at


async def test_chunk_delay_spaces_the_events(mock):
    send = await mock()
    res = await send(stream=True, mock={"chunk_delay": 0.01, "chunks": 4})
    # 7 events (role, 4 contents, finish, [DONE]) with 6 gaps of at least 10 ms
    assert res.events == 7
    assert res.end_at - res.first_body_at >= 6 * 0.009


async def test_delay_holds_the_non_stream_answer(mock):
    send = await mock(MockSettings(delay=0.03))
    res = await send()
    assert res.status == 200 and res.body_bytes > 0
    assert res.end_at - res.sent >= 0.028


async def test_status_knob_and_keep_alive_after_an_error(mock):
    send = await mock()
    res = await send(mock={"status": 503})
    assert res.status == 503
    again = await send()
    assert again.status == 200 and again.error is None


async def test_drop_after_cuts_the_stream(mock):
    send = await mock()
    res = await send(stream=True, mock={"drop_after": 2})
    assert not res.tail.endswith(b"data: [DONE]\n\n")
    assert res.error == "connection closed"


async def test_client_times_out_on_a_hang(aiohttp_server):
    server = await aiohttp_server(make_app())
    conn = await Connection.open("127.0.0.1", server.port)
    payload = build_request(str(server.make_url("/v1/chat/completions")),
                            orjson.dumps({"model": "m", "messages": MESSAGES, "mock": {"hang": True}}))
    res = await conn.request(payload, timeout=0.1)
    assert res.error == "timeout"
    assert conn.closed


def test_texts_are_taken_in_turn_and_made_new_when_asked():
    from benchmarks.loadgen import PROMPT, texts_for

    assert texts_for({}, 5) == (PROMPT[0]["content"], PROMPT[1]["content"])
    job = {"texts": ["a?", "b?"], "system": "S"}
    assert [texts_for(job, i) for i in range(3)] == [("S", "a?"), ("S", "b?"), ("S", "a?")]
    unique = [texts_for({**job, "unique": True}, i, nonce=42) for i in range(1000)]
    assert len({system for system, _ in unique}) == 1000 and unique[1][0] == "S Conversation 42-1."
    assert len({user for _, user in unique}) == 1000
    assert {user.rstrip("\u200b\u200c") for _, user in unique} == {"a?", "b?"}  # words unchanged
    assert texts_for({**job, "unique": True}, 1, nonce=43)[0] not in {s for s, _ in unique}  # another job


def test_fresh_texts_differ_only_by_invisible_characters():
    from benchmarks.loadgen import PROMPT, invisible_tag, texts_for

    job = {"texts": ["Why do cats purr?"], "fresh": True}
    texts = [texts_for(job, i, nonce=7) for i in range(500)]
    assert {system for system, _ in texts} == {PROMPT[0]["content"]}
    assert len({user for _, user in texts}) == 500
    assert {user.rstrip("\u200b\u200c") for _, user in texts} == {"Why do cats purr?"}
    assert invisible_tag(5, bits=4) == "\u200c\u200b\u200c\u200b"  # 5 = 0b0101, lowest bit first
    assert texts_for(job, 3, nonce=1) != texts_for(job, 3, nonce=2)


def test_payloads_are_built_once_unless_every_request_differs():
    from benchmarks.loadgen import Payloads

    job = {"url": "http://127.0.0.1:1/v1/chat/completions", "texts": ["a", "b"], "system": "S"}
    p = Payloads(job)
    first = [p.next(False) for _ in range(4)]
    assert first[0] is first[2] and first[0] != first[1]
    assert b'"content":"S"' in first[0] and b'"content":"a"' in first[0]
    q = Payloads({**job, "unique": True}, nonce=9)
    assert len({q.next(False) for _ in range(5)}) == 5
    assert b'"stream":true' in q.next(True)


def test_header_value_reads_the_watched_header():
    from benchmarks.httpclient import header_value

    head = b"http/1.1 200 ok\r\ncontent-type: application/json\r\nx-tollway-cache: semantic-hit\r\nx: y"
    assert header_value(head, b"\r\nx-tollway-cache:") == "SEMANTIC-HIT"
    assert header_value(head + b"\r\nx-tollway-cache-veto: numbers", b"\r\nx-tollway-cache:") == "SEMANTIC-HIT"
    assert header_value(b"http/1.1 200 ok\r\nx-tollway-cache: hit", b"\r\nx-tollway-cache:") == "HIT"
    assert header_value(b"http/1.1 200 ok\r\nx: y", b"\r\nx-tollway-cache:") is None


async def test_one_write_sends_the_whole_stream_framed_by_its_length(aiohttp_client):
    """The static-server shape: the same events as a paced stream, in one write with a Content-Length."""
    client = await aiohttp_client(make_app(MockSettings()))
    body = {"model": "m", "messages": MESSAGES, "stream": True, "mock": {"chunks": 50, "one_write": True}}
    r = await client.post("/v1/chat/completions", json=body)
    raw = await r.read()
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert int(r.headers["Content-Length"]) == len(raw) and "Transfer-Encoding" not in r.headers
    payloads = sse_payloads(raw)
    assert len(payloads) == 52 + 1 and payloads[-1] == b"[DONE]"  # role, 50 pieces, stop; then [DONE]
    body["mock"] = {"chunks": 50}
    r = await client.post("/v1/chat/completions", json=body)
    paced = sse_payloads(await r.read())
    strip = [orjson.loads(p) | {"created": 0} for p in payloads[:-1]]
    assert strip == [orjson.loads(p) | {"created": 0} for p in paced[:-1]]


@pytest.mark.parametrize("one_write", [False, True])
async def test_usage_null_puts_a_null_usage_in_every_chunk_when_usage_is_asked(aiohttp_client, one_write):
    """OpenAI's shape with ``stream_options.include_usage``: ``"usage":null`` ends every chunk
    before the usage chunk (exact bytes); asked without usage, the same answer as without the knob."""
    client = await aiohttp_client(make_app(MockSettings()))
    mock = {"chunks": 3, "chunk_size": 4, "one_write": one_write}
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True},
            "mock": {**mock, "usage_null": True}}
    raw = await (await client.post("/v1/chat/completions", json=body)).read()
    payloads = sse_payloads(raw)
    assert len(payloads) == 1 + 3 + 1 + 1 + 1  # role, pieces, stop, usage, [DONE]
    assert all(p.endswith(b'}],"usage":null}') for p in payloads[:5])
    assert payloads[1].endswith(b'"choices":[{"index":0,"delta":{"content":"tok0"},"finish_reason":null}],'
                                b'"usage":null}')
    assert payloads[5].endswith(b'"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,'
                                b'"total_tokens":5}}')
    assert payloads[6] == b"[DONE]"
    plain = {**body, "mock": mock}
    assert sse_payloads(await (await client.post("/v1/chat/completions", json=plain)).read()) == [
        p.replace(b',"usage":null}', b"}") for p in payloads]
    del body["stream_options"], plain["stream_options"]  # no usage asked: no nulls, no usage chunk
    no_usage = sse_payloads(await (await client.post("/v1/chat/completions", json=body)).read())
    assert no_usage == sse_payloads(await (await client.post("/v1/chat/completions", json=plain)).read())
    assert len(no_usage) == 6 and b'"usage"' not in b"".join(no_usage)


@pytest.mark.parametrize("shape", [{"stream": True, "mock": {"one_write": True, "usage_null": True},
                                    "stream_options": {"include_usage": True}},
                                   {"stream": True, "mock": {"chunks": 3}},
                                   {}])
async def test_a_shape_is_served_as_a_static_file_the_same_bytes_each_time(aiohttp_client, monkeypatch, shape):
    clock = iter(range(1_700_000_000, 1_700_000_100))  # each render a second later: "created" would differ
    monkeypatch.setattr(mock_upstream, "time", SimpleNamespace(time=lambda: next(clock)))
    app = make_app(MockSettings())
    client = await aiohttp_client(app)
    body = {"model": "m", "messages": MESSAGES, **shape}
    first = await (await client.post("/v1/chat/completions", json=body)).read()
    again = await (await client.post("/v1/chat/completions", json=body)).read()
    other = await (await client.post("/v1/chat/completions", json={**body, "model": "n"})).read()
    assert first == again  # ("created" included: rendered once)
    assert b'"model":"n"' in other and b'"model":"n"' not in first
