"""``OpenAIPassthrough.feed``'s fast paths (no search of events without usage or
``[DONE]``, the events before the first of them passed in one slice) give, read
after read, exactly what the plain definition gives: every complete event split
and looked at, for well-formed answers and hostile ones, cut anywhere."""

from __future__ import annotations

import random
import re

import orjson

from benchmarks.mock_upstream import render_stream
from proxy.call import Call, Usage
from proxy.sse import DONE_EVENT, EventSplitter, data_event, load_event_json, parse_event
from proxy.streaming import OpenAIPassthrough, splice_usage_fields

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_BOUNDARY = re.compile(rb"\r?\n\r?\n")


class ReferencePassthrough:
    """The definition: each complete event looked at in turn (no fast path)."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.splitter = EventSplitter()
        self.usage_event: bytes | None = None
        self.usage_chunk: dict | None = None

    def feed(self, data: bytes) -> bytes:
        complete = self.splitter.feed(data)
        if not complete or (_USAGE.search(complete) is None and b"[DONE]" not in complete):
            return complete
        blocks, start = [], 0
        for m in _BOUNDARY.finditer(complete):
            blocks.append(complete[start:m.end()])
            start = m.end()
        if start < len(complete):
            blocks.append(complete[start:])
        out = []
        for block in blocks:
            if self.done:
                break
            if parse_event(block)[1] == b"[DONE]":
                self.done = True
                break
            if _USAGE.search(block) is not None:
                chunk = load_event_json(parse_event(block)[1])
                if chunk is None:
                    self.usage = None
                    continue
                if isinstance(chunk.get("usage"), dict):
                    self.usage = Usage.from_openai(chunk["usage"])
                if chunk.get("choices") == []:
                    self.usage_event, self.usage_chunk = block, chunk
                    continue
            out.append(block)
        return b"".join(out)


def reference_finish(ref: ReferencePassthrough, extra: dict) -> bytes:
    """The held usage event with the gateway's fields added, as ``finish`` writes it."""
    payload = parse_event(ref.usage_event)[1]
    spliced = splice_usage_fields(payload, extra)
    if spliced is None:
        chunk = orjson.loads(orjson.dumps(ref.usage_chunk))
        chunk["usage"].update(extra)
        spliced = orjson.dumps(chunk)
    return data_event(spliced) + DONE_EVENT


def outcome(codec, data: bytes) -> tuple:
    try:
        return ("out", codec.feed(data))
    except Exception as exc:  # the same failure, the same way
        return ("raised", type(exc).__name__, str(exc))


def state(codec) -> tuple:
    usage = codec.usage
    held = codec._usage_event if isinstance(codec, OpenAIPassthrough) else codec.usage_event
    chunk = codec._usage_chunk if isinstance(codec, OpenAIPassthrough) else codec.usage_chunk
    return (None if usage is None else vars(usage) if hasattr(usage, "__dict__") else repr(usage),
            codec.done, held, chunk)


HEAD = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
PIECES = [
    b"data: " + orjson.dumps({**HEAD, "choices": [{"index": 0, "delta": {"content": "hi"}}]}) + b"\n\n",
    b"data: " + orjson.dumps({**HEAD, "choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None}) + b"\n\n",
    b'data: {"choices":[{"delta":{"content":"say [DONE] and \\"usage\\":{ here"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n',
    b'data: {"choices":[],"usage" : {"prompt_tokens":5,"completion_tokens":1}}\r\n\r\n',
    b'data: {"choices":[{"delta":{}}],"usage":{"prompt_tokens":2,"completion_tokens":2}}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":NaN}}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tok\n\n',
    b"data: [DONE]\n\n", b"data:[DONE]\r\n\r\n", b"data: [DONE]\n", b": comment [DONE]\n\n",
    b"event: x\ndata: [DONE]\n\n", b'data: "[DONE]"\n\n', b'"usage"\n\n', b":{\n\n", b"\r\n", b"\n", b"\r",
    b"data: ", b"[DONE]", b'"usage":{', b"}\n\n",
]


def answers(rng: random.Random, n: int):
    for chunks, size, usage in ((50, 16, True), (16, 16, True), (3, 4, False), (0, 1, True)):
        yield b"".join(render_stream("m", chunks, size, 20, usage))
    for _ in range(n):
        yield b"".join(rng.choice(PIECES) for _ in range(rng.randint(1, 14)))


def test_feed_gives_what_the_definition_gives_read_after_read():
    rng = random.Random(12)
    for answer in answers(rng, 3000):
        for _ in range(6):
            k = rng.choice((0, 0, 1, 2, 5, 20))
            bounds = sorted({0, len(answer), *(rng.randint(0, len(answer)) for _ in range(k))})
            fast, ref = OpenAIPassthrough(), ReferencePassthrough()
            for a, b in zip(bounds, bounds[1:], strict=False):
                got, want = outcome(fast, answer[a:b]), outcome(ref, answer[a:b])
                assert got == want, (answer, bounds)
                assert state(fast) == state(ref), (answer, bounds)
                if got[0] == "raised":
                    break
            else:
                if ref.usage_event is not None and ref.usage is not None:
                    call = Call(None, "chat", {"stream": True, "stream_options": {"include_usage": True}}, b"")
                    call.billing.usage = ref.usage
                    call.billing.usage_extra["cost"] = 0.25
                    assert fast.finish(call) == reference_finish(ref, {"cost": 0.25}), answer
