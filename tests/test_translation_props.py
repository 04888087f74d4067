"""Property: cutting an upstream stream at any byte boundaries changes nothing
the client assembles. Every fixture stream of every provider goes through
the codec the gateway would use (translation to OpenAI or Anthropic clients,
or the byte passthrough), in-process, fed in random pieces, and is compared
with the same stream fed whole."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.mock_fixtures import FIXTURES
from plugins.providers.anthropic_response import AnthropicStreamDecoder
from plugins.providers.anthropic_stream import AnthropicEncoder, AnthropicPassthrough
from plugins.providers.gemini_response import GeminiStreamDecoder
from plugins.providers.openai import OpenAIStreamDecoder
from proxy import Call, ProxyError
from proxy.streaming import OpenAIEncoder, OpenAIPassthrough, TranslatingCodec

STREAMS = ("text", "tools", "thinking", "length", "midstream_error")
DECODERS = {"openai": OpenAIStreamDecoder, "anthropic": lambda: AnthropicStreamDecoder("up"),
            "gemini": lambda: GeminiStreamDecoder("up", "m")}
ENCODERS = {"openai": OpenAIEncoder, "anthropic": lambda: AnthropicEncoder(with_thinking=True)}


def fixture(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / f"{name}.sse").read_bytes()


def run(codec, pieces: list[bytes], dialect: str) -> bytes:
    """Drive a codec as ``proxy.streaming.pump`` does."""
    call = Call(None, "chat", {"stream": True, "stream_options": {"include_usage": True}}, b"", dialect)
    out = []
    try:
        for piece in pieces:
            out.append(codec.feed(piece))
            if codec.done:
                break
        out.append(codec.end())
        out.append(codec.finish(call))
    except ProxyError as err:
        out.append(codec.fail(err))
    return b"".join(out)


def assemble_openai(raw: bytes) -> dict:
    text, reasoning, calls, finish, usage, error = [], [], {}, None, None, None
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        assert block.startswith(b"data: ")
        payload = block[6:]
        if payload == b"[DONE]":
            continue
        chunk = orjson.loads(payload)
        if "error" in chunk:
            error = chunk["error"]["code"]
            continue
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            d = choice["delta"]
            text.append(d.get("content") or "")
            reasoning.append(d.get("reasoning_content") or "")
            for tc in d.get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], ["", ""])
                slot[0] += (tc.get("function") or {}).get("name") or ""
                slot[1] += (tc.get("function") or {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    tools = [(calls[i][0], orjson.loads(calls[i][1])) for i in sorted(calls)]
    return {"text": "".join(text), "reasoning": "".join(reasoning), "tools": tools, "finish": finish,
            "usage": usage, "error": error, "done": raw.endswith(b"data: [DONE]\n\n")}


def assemble_anthropic(raw: bytes) -> dict:
    blocks: dict[int, dict] = {}
    stop, usage, error, names = None, {}, None, []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        name, data = block.split(b"\n", 1)
        name = name[len(b"event: "):].decode()
        ev = orjson.loads(data[len(b"data: "):])
        names.append(name)
        if name == "message_start":
            usage.update(ev["message"]["usage"])
        elif name == "content_block_start":
            blocks[ev["index"]] = {**ev["content_block"], "json": ""}
        elif name == "content_block_delta":
            b, d = blocks[ev["index"]], ev["delta"]
            b["text" if "text" in d else "thinking" if "thinking" in d else "json"] = \
                b.get("text" if "text" in d else "thinking" if "thinking" in d else "json", "") + \
                d.get("text", d.get("thinking", d.get("partial_json", "")))
        elif name == "message_delta":
            stop = ev["delta"]["stop_reason"]
            usage.update(ev["usage"])
        elif name == "error":
            error = ev["error"]["type"]
    ordered = [blocks[i] for i in sorted(blocks)]
    return {"text": "".join(b.get("text", "") for b in ordered if b["type"] == "text"),
            "thinking": "".join(b.get("thinking", "") for b in ordered if b["type"] == "thinking"),
            "tools": [(b["name"], orjson.loads(b["json"] or "{}")) for b in ordered if b["type"] == "tool_use"],
            "stop": stop, "usage": usage, "error": error, "first": names[0], "last": names[-1]}


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]


cuts = st.lists(st.integers(min_value=0, max_value=4096), max_size=40)


@pytest.mark.parametrize("client", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("name", STREAMS)
@settings(max_examples=40, deadline=None)
@given(points=cuts)
def test_translated_stream_survives_any_cut(client, provider, name, points):
    if provider == client:
        return  # same dialect: the passthrough, tested below
    data = fixture(provider, name)
    assemble = assemble_openai if client == "openai" else assemble_anthropic

    def result(pieces):
        codec = TranslatingCodec(DECODERS[provider](), ENCODERS[client]())
        return assemble(run(codec, pieces, client))

    whole = result([data])
    assert result(cut(data, [p % (len(data) + 1) for p in points])) == whole
    if name == "midstream_error":
        assert whole["error"] is not None and "Partial answ" in whole["text"]
    else:
        assert whole["error"] is None and whole["text"]


@pytest.mark.parametrize("provider, client", [("openai", "openai"), ("anthropic", "anthropic"),
                                              ("anthropic", "openai"), ("gemini", "anthropic")])
@pytest.mark.parametrize("name", STREAMS)
def test_one_byte_reads(provider, client, name):
    data = fixture(provider, name)
    assemble = assemble_openai if client == "openai" else assemble_anthropic

    def result(pieces):
        codec = TranslatingCodec(DECODERS[provider](), ENCODERS[client]())
        return assemble(run(codec, pieces, client))

    assert result([data[i:i + 1] for i in range(len(data))]) == result([data])


@pytest.mark.parametrize("name", STREAMS)
@settings(max_examples=60, deadline=None)
@given(points=cuts)
def test_anthropic_passthrough_is_byte_exact_under_any_cut(name, points):
    data = fixture("anthropic", name)
    pieces = cut(data, [p % (len(data) + 1) for p in points])
    codec = AnthropicPassthrough()
    assert run(codec, pieces, "anthropic") == data
    whole = AnthropicPassthrough()
    run(whole, [data], "anthropic")
    assert codec.usage == whole.usage and codec.usage is not None


@pytest.mark.parametrize("name", ["text", "tools", "thinking", "length"])
@settings(max_examples=30, deadline=None)
@given(points=cuts)
def test_openai_passthrough_usage_under_any_cut(name, points):
    data = fixture("openai", name)
    codec = OpenAIPassthrough()
    run(codec, cut(data, [p % (len(data) + 1) for p in points]), "openai")
    whole = OpenAIPassthrough()
    run(whole, [data], "openai")
    assert codec.usage == whole.usage and codec.usage is not None


def test_translated_anthropic_stream_is_well_formed():
    raw = run(TranslatingCodec(DECODERS["gemini"](), ENCODERS["anthropic"]()), [fixture("gemini", "tools")],
              "anthropic")
    got = assemble_anthropic(raw)
    assert (got["first"], got["last"], got["stop"]) == ("message_start", "message_stop", "tool_use")
    assert got["usage"]["input_tokens"] == 420 and got["usage"]["output_tokens"] == 95
