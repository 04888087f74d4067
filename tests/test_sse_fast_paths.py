"""The SSE helpers' fast paths (C-level split and searches for the usual \\n-only
streams) cut exactly where the reference definitions do, on every input."""

from __future__ import annotations

import random
import re

from benchmarks.mock_upstream import render_stream
from proxy.sse import EventSplitter, last_boundary, split_events
from proxy.streaming import _USAGE_OBJECT, OpenAIPassthrough, _done_at, _usage_object_at

BOUNDARY = re.compile(rb"\r?\n\r?\n")


def reference_split(blob: bytes) -> list[bytes]:
    out, start = [], 0
    for m in BOUNDARY.finditer(blob):
        out.append(blob[start:m.end()])
        start = m.end()
    if start < len(blob):
        out.append(blob[start:])
    return out


def reference_boundary(data: bytes) -> int:
    idx, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    if crlf >= 0 and crlf + 4 > idx + 2:
        return crlf + 4
    return idx + 2 if idx >= 0 else 0


def blobs(alphabet: bytes, n: int = 20_000):
    rng = random.Random(7)
    for _ in range(n):
        yield bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))


def test_split_events_cuts_where_the_boundary_pattern_does():
    for blob in blobs(b"\n\n\rab"):
        assert split_events(blob) == reference_split(blob), blob
    for blob in blobs(b"\n\nab"):
        assert split_events(blob) == reference_split(blob), blob


def test_last_boundary_is_the_end_of_the_last_blank_line():
    for blob in blobs(b"\r\n\r\nab"):
        assert last_boundary(blob) == reference_boundary(blob), blob


def test_a_fresh_splitter_gives_the_events_up_to_the_last_blank_line_and_holds_the_rest():
    """Its fast path (a read that ends with \n\n passes whole) against the definition."""
    for alphabet in (b"\r\n\r\nab", b"\n\nab", b"\n\n\n\r"):
        for blob in blobs(alphabet):
            splitter = EventSplitter()
            end = reference_boundary(blob)
            assert splitter.feed(blob) == blob[:end], blob
            assert splitter.pending == blob[end:], blob


def test_the_usage_object_is_found_where_the_pattern_finds_it():
    for blob in blobs(b'"usage": {n', 20_000):
        m = _USAGE_OBJECT.search(blob)
        assert _usage_object_at(blob) == (m.start() if m else -1), blob
    null_everywhere = b'data: {"usage":null}\n\n' * 40 + b'data: {"choices":[],"usage" : {"a":1}}\n\n'
    assert _usage_object_at(null_everywhere) == null_everywhere.index(b'"usage" :')


PIECES = [b'"usage"', b'"usage":null', b'"usage":null', b'"usage":null,', b'"usage":{', b'"usage" : {', b'"usage":\n{',
          b'"usage"usage":{', b'"usage"usage":null', b'"usage":nul', b'"usage":n', b'usage"', b'"usag', b":null", b":{",
          b"null", b'"', b":", b"{", b" ", b"x", b'data: {"id":"c","choices":[{"delta":{"content":"hi"}}],',
          b'"usage": null}\n\n', b"\n\n",
          # the search's own needle and what is checked before it: ge" without "usa, "usa without ge"
          b'ge"', b'ge":{', b'ge" :{', b'ge":null', b'"usa', b'"us', b"g", b'"message":{', b'"logprobs":null',
          b'"usage"usage"usage":{', b'"usa"usage":{']


def test_the_usage_object_is_found_where_the_pattern_finds_it_among_nulls():
    """An OpenAI stream that asks for usage carries ``"usage":null`` in every chunk: past the
    first, the nulls are skipped in one search, and the answer is still the pattern's,
    whatever follows them (spaced objects, overlapping ``"usage"usage"``, cut nulls)."""
    rng = random.Random(11)
    counted = 0
    for _ in range(30_000):
        blob = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14)))
        start = rng.choice([0, 0, 0, rng.randint(0, len(blob))])
        m = _USAGE_OBJECT.search(blob, start)
        assert _usage_object_at(blob, start) == (m.start() if m else -1), (blob, start)
        counted += blob.count(b'"usage"', start) >= 4
    assert counted > 5_000
    chunk = b'data: {"id":"chatcmpl-AbC","choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}\n\n'
    final = b'data: {"id":"chatcmpl-AbC","choices":[],"usage":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n'
    answer = chunk * 52 + final
    assert _usage_object_at(answer) == answer.index(b'"usage":{')
    assert _usage_object_at(chunk * 52) == -1
    spaced = chunk * 30 + b'data: {"usage" :{"a":1},"choices":[{}]}\n\n' + chunk * 20 + final
    assert _usage_object_at(spaced) == spaced.index(b'"usage" :{')


def test_a_whole_answer_in_one_read_passes_byte_for_byte_with_usage_held():
    events = render_stream("m", 50, 16, 7, True)
    codec = OpenAIPassthrough()
    out = codec.feed(b"".join(events))
    assert out == b"".join(events[:-2])  # everything but the usage event (held) and [DONE]
    assert codec.done and codec.usage is not None and codec.usage.completion_tokens == 50


def reference_splice(raw: bytes, extra: dict) -> bytes | None:
    import orjson

    matches = list(_USAGE_OBJECT.finditer(raw))
    if len(matches) != 1:
        return None
    at = matches[0].end()
    fields = orjson.dumps(extra)[1:-1]
    closes_at_once = raw[at:at + 64].lstrip()[:1] == b"}"
    return raw[:at] + fields + (b"" if closes_at_once else b",") + raw[at:]


def test_usage_fields_are_spliced_where_the_pattern_says():
    from proxy.streaming import splice_usage_fields

    for blob in blobs(b'"usage": {}n', 20_000):
        assert splice_usage_fields(blob, {"cost": 0.5}) == reference_splice(blob, {"cost": 0.5}), blob
    whole = b'{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2},"choices":[]}'
    assert splice_usage_fields(whole, {"cost": 1.5}) == (
        b'{"id":"x","usage":{"cost":1.5,"prompt_tokens":1,"completion_tokens":2},"choices":[]}')


def test_usage_fields_are_spliced_where_the_pattern_says_for_token_soups():
    """Inputs made of the pattern's pieces (so one, two or no ``"usage"`` keys, compact or
    spaced, closing at once or not): the fast path for one compact key and the general
    path both splice exactly where the reference does."""
    from proxy.streaming import splice_usage_fields

    pieces = [b'"usage"', b'"usage":{', b":", b" ", b"\n", b"{", b"}", b'"', b"x", b'"a":1', b","]
    rng = random.Random(11)
    for _ in range(20_000):
        blob = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert splice_usage_fields(blob, {"cost": 0.5}) == reference_splice(blob, {"cost": 0.5}), blob



DONE_PIECES = [b"data: [DONE]\n\n", b"data:[DONE]\r\n\r\n", b"data: [DONE]\r\n", b"data: [DONE]\rx\n\n",
               b'data: {"c":"[DONE]"}\n\n', b'data: {"c":"x [DONE]\\n"}\n\n', b"data: [DONE]x\n\n", b"[DONE]\n\n",
               b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n',
               b'data: {"choices":[{}],"usage":null}\n\n', b'data: {"choices":[],"usage": {"prompt_tokens":3}}\n\n',
               b'data: {"usage":{"x":1}\n\n', b"event: e\ndata: [DONE]\n\n", b"data: [DONE]\n: c\n\n",
               b"data: [DONE]\ndata: x\n\n", b": c\n", b"\n\n", b"\r", b"\n", b"x",
               # a ge" that ends no "usage", a spaced object, a null then an object in one event
               b'data: {"page":{"x":1},"message":{},"usage":null}\n\n', b'data: {"choices":[],"usage"\n:\n{"a":2}}\n\n',
               b'data: {"usage":null,"choices":[],"x":{"usage" :{"prompt_tokens":4}}}\n\n']


def test_feed_passes_what_splitting_every_event_passes(monkeypatch):
    """``OpenAIPassthrough.feed``'s fast path (events before the first usage object or
    line-ending ``[DONE]`` pass as one slice) against the same feed with every event split
    and looked at: the same bytes out, the same end, usage and held event, over generated
    answers with terminators in texts, CRLF and lone-CR lines, unreadable usage objects."""
    import proxy.streaming

    rng = random.Random(1205)
    for _ in range(20_000):
        blob = b"".join(rng.choice(DONE_PIECES) for _ in range(rng.randint(1, 9))) + b"\n\n"
        seen = []
        for split_all in (False, True):
            if split_all:
                monkeypatch.setattr(proxy.streaming, "_done_at", lambda blob, end: 0)
            codec = OpenAIPassthrough()
            out = codec.feed(blob)
            seen.append((out, codec.done, codec.usage, codec._usage_event))
            monkeypatch.undo()
        assert seen[0] == seen[1], blob


LONG_PIECES = [b"data: [DONE]\n\n", b"data:[DONE]\r\n\r\n", b"[DONE]\r", b"[DONE]x", b"[DON", b"DONE]\n", b"[D",
               b"D", b"O", b"N", b"E", b"DO", b"NE", b"\r", b"\n", b"\n\n", b"x" * 300, b"y" * 700,
               b'data: {"id":"chatcmpl-AbDxOyNzEq","choices":[{"delta":{"content":"Do"}}],"usage":null}\n\n',
               b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n']


def test_done_is_found_where_the_needles_find_it_in_long_blobs():
    """``_done_at`` over blobs past its bound (where it first looks for the letters of ``[DONE]``):
    the first ``[DONE]`` that ends a line, as the two needles' plain searches find it."""
    rng = random.Random(1206)
    bounded = 0
    for _ in range(20_000):
        blob = b"".join(rng.choice(LONG_PIECES) for _ in range(rng.randint(1, 24)))
        found = [i for i in (blob.find(b"[DONE]\n"), blob.find(b"[DONE]\r")) if i >= 0]
        assert _done_at(blob, len(blob)) == (min(found) if found else -1), blob
        bounded += len(blob) > 1024
    assert bounded > 5_000
    answer = b"".join(render_stream("m", 50, 16, 7, True, True))
    assert _done_at(answer, len(answer)) == answer.index(b"[DONE]") and _done_at(answer[:-8], len(answer) - 8) == -1


def test_feed_passes_what_splitting_every_event_passes_for_long_reads(monkeypatch):
    """As above, over reads past ``_done_at``'s bound (one-read answers of every shape)."""
    import proxy.streaming

    rng = random.Random(1207)
    pieces = DONE_PIECES + [b'data: {"choices":[{"delta":{"content":"' + b"Do Not Echo" * 40 + b'"}}]}\n\n',
                            b'data: {"choices":[{"delta":{"content":"' + b"x" * 900 + b'"}}],"usage":null}\n\n']
    for _ in range(3_000):
        blob = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) + b"\n\n"
        seen = []
        for split_all in (False, True):
            if split_all:
                monkeypatch.setattr(proxy.streaming, "_done_at", lambda blob, end: 0)
            codec = OpenAIPassthrough()
            out = codec.feed(blob)
            seen.append((out, codec.done, codec.usage, codec._usage_event))
            monkeypatch.undo()
        assert seen[0] == seen[1], blob


#: One-line events (the fast path's kind, ``}`` at the end) and the shapes that must miss it.
EVENT_PIECES = [
    b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n',
    b'data: {"choices":[{"usage":{"n":1}}],"usage":null}\n\n',  # a nested object, a null at the top
    b'data: {"usage":{"prompt_tokens":1}\n\n',  # an unreadable usage report: dropped, usage unknown
    b'data: {"choices":[],"usage" :{"prompt_tokens":3,"completion_tokens":4}}\n\n',
    b'data: {"x":"[DONE]"}\n\n', b"data:[DONE]}\n\n", b": a comment}\n\n", b"data: {}\n\n",
    b"data: [DONE]\n\n", b'data: {"x":1}\r\n\r\n', b'data: {"a":1}\rdata: [DONE]\r}\n\n',
    b'event: x\ndata: {"y":2}\n\n', b'data: {"a":"\\n"}\n\n', b'data: {"message":{},"page":1}\n\n',
    b"data: [DONE]\r}\n\n", b"data: [DONE]\n}\n\n",  # a terminator's line, then a line of "}"
]


def test_feed_passes_each_read_as_the_split_of_every_event_does(monkeypatch):
    """``OpenAIPassthrough.feed``'s path for a read that is one whole one-line event against
    the same feed with that path and the one-slice path off (every event split and looked
    at): the same bytes out of every read, the same end, usage and held event, over
    generated streams read an event at a time and cut anywhere."""
    import proxy.streaming

    rng = random.Random(1208)
    fast_reads = 0
    for _ in range(6_000):
        events = [rng.choice(EVENT_PIECES) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.5:
            reads = events
        else:
            blob = b"".join(events)
            cuts = sorted(rng.sample(range(1, len(blob)), min(len(blob) - 1, rng.randint(0, 4))))
            reads = [blob[i:j] for i, j in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
        seen = []
        for reference in (False, True):
            if reference:
                monkeypatch.setattr(proxy.streaming, "_done_at", lambda blob, end: 0)
            codec = OpenAIPassthrough()
            feed = codec.feed_general if reference else codec.feed
            outs = []
            for data in reads:
                if codec.done:
                    break
                outs.append(feed(data))
            seen.append((outs, codec.done, codec.usage, codec._usage_event))
            monkeypatch.undo()
        assert seen[0] == seen[1], reads
        fast_reads += reads.count(EVENT_PIECES[0])
    assert fast_reads > 500
