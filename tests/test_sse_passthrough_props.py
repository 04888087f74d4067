"""SSE byte streams cut at random points: usage is still found, and the client
receives exactly the upstream's bytes (less the usage event when unasked)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import sse
from proxy.call import Call
from proxy.errors import ProxyError
from proxy.sse import EventReader, EventSplitter, split_events
from proxy.streaming import OpenAIPassthrough, splice_usage_fields


def make_stream(n_chunks: int, crlf: bool, text: str) -> tuple[bytes, bytes]:
    """An upstream stream and its usage event."""
    nl = b"\r\n" if crlf else b"\n"
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def ev(obj) -> bytes:
        return b"data: " + orjson.dumps(obj) + nl + nl

    events = [ev({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None})]
    events += [ev({**head, "choices": [{"index": 0, "delta": {"content": f"{text}{i}"}}], "usage": None})
               for i in range(n_chunks)]
    events.append(b": keep-alive comment" + nl + nl)
    events.append(ev({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}))
    usage = ev({**head, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": n_chunks,
                                                  "total_tokens": 11 + n_chunks}})
    return b"".join(events) + usage + b"data: [DONE]" + nl + nl, usage


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def run(pieces: list[bytes], include_usage: bool) -> tuple[bytes, OpenAIPassthrough]:
    body = {"model": "m", "messages": [], "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    call = Call(None, "chat", body, b"")
    codec = OpenAIPassthrough()
    out = b"".join(codec.feed(p) for p in pieces if not codec.done)
    out += codec.end() + codec.finish(call)
    return out, codec


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 12), crlf=st.booleans(), text=st.text(max_size=8),
       points=st.lists(st.integers(0, 10_000), max_size=30), include_usage=st.booleans())
def test_cut_anywhere_same_bytes_and_usage(n, crlf, text, points, include_usage):
    stream, usage_event = make_stream(n, crlf, text)
    out, codec = run(cut(stream, points), include_usage)
    assert codec.usage is not None and codec.usage.completion_tokens == n and codec.usage.prompt_tokens == 11
    # [DONE] is re-emitted by the gateway with \n line endings; compare the events before it.
    done_at = stream.rindex(b"data: [DONE]")
    expected = stream[:done_at] if include_usage else stream[:done_at].replace(usage_event, b"")
    assert out.endswith(b"data: [DONE]\n\n")
    assert out[: -len(b"data: [DONE]\n\n")] == expected


@settings(max_examples=100, deadline=None)
@given(points=st.lists(st.integers(0, 10_000), max_size=20))
def test_usage_cost_added_to_the_usage_chunk(points):
    stream, _ = make_stream(3, False, "x")
    call = Call(None, "chat", {"stream": True, "stream_options": {"include_usage": True}}, b"")
    call.billing.usage_extra["cost"] = 0.000123
    codec = OpenAIPassthrough()
    out = b"".join(codec.feed(p) for p in cut(stream, points)) + codec.end() + codec.finish(call)
    events = [e for e in split_events(out)]
    usage_chunk = orjson.loads(events[-2][6:])
    assert usage_chunk["usage"]["cost"] == 0.000123 and usage_chunk["choices"] == []


def test_stream_cut_before_done_and_usage_is_an_error():
    stream, _ = make_stream(3, False, "x")
    codec = OpenAIPassthrough()
    codec.feed(stream[: stream.index(b'"finish_reason"')])
    try:
        codec.end()
    except ProxyError as err:
        assert err.status == 502 and err.code == "upstream_stream_cut"
    else:
        raise AssertionError("a cut stream must be an error")


@settings(max_examples=200, deadline=None)
@given(points=st.lists(st.integers(0, 10_000), max_size=30), crlf=st.booleans())
def test_event_reader_same_events_whatever_the_cuts(points, crlf):
    stream, _ = make_stream(5, crlf, "é✓")  # multi-byte characters can be cut too
    whole = EventReader().feed(stream)
    reader = EventReader()
    pieces = [ev for p in cut(stream, points) for ev in reader.feed(p)]
    assert pieces == whole
    assert len(whole) == 9  # role, 5 contents, finish, usage, [DONE]; the comment is not an event


@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_event_splitter_small_reads_give_the_same_events(crlf, size):
    """Reads shorter than an event's end (\\r\\n\\r\\n is 4 bytes) still find it."""
    stream, _ = make_stream(3, crlf, "é")
    splitter = EventSplitter()
    out = b"".join(splitter.feed(stream[i:i + size]) for i in range(0, len(stream), size))
    assert out == stream and splitter.pending == b""


def test_an_event_without_an_end_is_refused_past_the_bound(monkeypatch):
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 1000)
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\n\n" + b"data: " + b"x" * 994) == b"data: 1\n\n"  # 1000 held: fine
    assert splitter.feed(b"\n\n") == b"data: " + b"x" * 994 + b"\n\n"
    with pytest.raises(ProxyError) as caught:
        for _ in range(200):
            splitter.feed(b"x" * 10)
    assert caught.value.status == 502 and caught.value.code == "upstream_event_too_large"


@pytest.mark.parametrize("raw", [
    b'{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
    b'{"id": "x", "usage" : { "prompt_tokens": 1 } , "z": [1]}',
    b'{"usage":{}}',
    b'{"usage":{ }, "note": "the text \\"usage\\":{ inside a string is not a key"}',
])
def test_usage_fields_spliced_into_json_bytes(raw):
    out = splice_usage_fields(raw, {"cost": 0.5, "x": "y"})
    body, original = orjson.loads(out), orjson.loads(raw)
    assert body["usage"] == {**original["usage"], "cost": 0.5, "x": "y"}
    assert {k: v for k, v in body.items() if k != "usage"} == {k: v for k, v in original.items() if k != "usage"}


def test_splice_refuses_ambiguous_documents():
    assert splice_usage_fields(b'{"a":{"usage":{"n":1}},"usage":{"n":2}}', {"cost": 1}) is None
    assert splice_usage_fields(b'{"usage":null}', {"cost": 1}) is None
