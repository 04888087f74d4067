"""``_done_at(blob, end)``: the first line-ending ``[DONE]`` within ``blob[:end]``, as the plain
searches find it, for every ``end`` (``feed`` passes where the first usage object begins), over
long blobs (past the bound where it first looks for the letters) and short ones."""

from __future__ import annotations

import random

from benchmarks.mock_upstream import render_stream
from proxy.sse_usage import usage_object_at
from proxy.streaming import _done_at

PIECES = [b"data: [DONE]\n\n", b"data:[DONE]\r\n\r\n", b"[DONE]\r", b"[DONE]x", b"[DON", b"DONE]\n", b"[D",
          b"D", b"O", b"N", b"E", b"\r", b"\n", b"\n\n", b"x" * 300, b"y" * 700, b'"usage":{', b'"usage" :{',
          b'data: {"id":"chatcmpl-AbDxOyNzEq","choices":[{"delta":{"content":"Do"}}],"usage":null}\n\n',
          b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n']


def plain(blob: bytes, end: int) -> int:
    found = [i for i in (blob.find(b"[DONE]\n", 0, end), blob.find(b"[DONE]\r", 0, end)) if i >= 0]
    return min(found) if found else -1


def test_done_within_the_first_end_bytes_is_the_plain_searches():
    rng = random.Random(1206_2)
    for _ in range(20_000):
        blob = b"".join(rng.choice(PIECES) for _ in range(rng.randint(1, 24)))
        for end in {len(blob), rng.randint(0, len(blob)), max(usage_object_at(blob), 0)}:
            assert _done_at(blob, end) == plain(blob, end), (blob, end)


def test_a_done_before_a_usage_object_ends_before_it():
    """What ``feed`` relies on: a ``[DONE]`` line that begins before the first usage object is
    found when the search ends where that object begins."""
    rng = random.Random(1206_3)
    for _ in range(20_000):
        blob = b"".join(rng.choice(PIECES) for _ in range(rng.randint(1, 16)))
        usage_at = usage_object_at(blob)
        if usage_at < 0:
            continue
        whole = plain(blob, len(blob))
        assert _done_at(blob, usage_at) == (whole if 0 <= whole < usage_at else -1), blob


def test_the_answer_of_the_bench_has_no_done_before_its_usage():
    answer = b"".join(render_stream("gpt-4o-mini", 50, 16, 20, True, usage_null=True))
    assert _done_at(answer, usage_object_at(answer)) == -1
    assert _done_at(answer, len(answer)) == answer.index(b"[DONE]")
