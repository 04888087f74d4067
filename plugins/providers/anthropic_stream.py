"""Streams to Anthropic clients: the passthrough codec and the encoder.

``AnthropicPassthrough`` (Anthropic upstream -> Anthropic client) forwards the
upstream's events byte for byte and sniffs usage from ``message_start`` and
``message_delta``. It holds the final ``message_delta`` (and what follows it,
``message_stop``) until the stream is priced: that event carries the final
usage, so the gateway's usage fields (``call.billing.usage_extra``, e.g. ``cost``) are
merged into it there. Holding costs the client nothing: the held events are
the last two of the stream and are written as soon as the upstream ends.
Without usage fields the held bytes go out unchanged.

``AnthropicEncoder`` writes canonical chunks as Anthropic events: one content
block per text run, thinking run or tool call, ``message_delta`` with the stop
reason and the usage (known only at the end of OpenAI streams), then
``message_stop``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy import Call, ProxyError, Usage
from proxy.sse import EventSplitter, load_event_json, named_event, parse_event, split_events

from .anthropic_canonical import STOP_REASONS, message_id, usage_to_anthropic
from .anthropic_response import merge_usage, stream_error

# The events the passthrough must look at: message_start/delta/stop and error.
_LIFECYCLE = re.compile(rb"^event: ?(?:message_|error)", re.MULTILINE)


def event(name: str, data: dict) -> bytes:
    return named_event(name.encode(), orjson.dumps({"type": name, **data}))


class AnthropicPassthrough:
    """Anthropic upstream -> Anthropic client, byte for byte."""

    __slots__ = ("usage", "done", "_provider", "_splitter", "_counts", "_held", "_error")

    def __init__(self, provider: str = "upstream") -> None:
        self.usage: Usage | None = None
        self.done = False
        self._provider = provider
        self._splitter = EventSplitter()
        self._counts: dict[str, Any] = {}
        self._held: list[bytes] | None = None  # message_delta and after
        # The upstream's own in-band error: forwarded as sent, and reported to
        # the core (end() raises it) so the call is recorded as failed.
        self._error: ProxyError | None = None

    def feed(self, data: bytes) -> bytes:
        complete = self._splitter.feed(data)
        if not complete:
            return b""
        # Fast path: content events only (the common case, mid-stream).
        if _LIFECYCLE.search(complete) is None:
            if self._held is not None:
                self._held.append(complete)
                return b""
            return complete
        out = []
        for block in split_events(complete):
            if self.done:
                break
            name, payload = parse_event(block)
            if name in ("message_start", "message_delta"):
                data_ = load_event_json(payload)
                if data_ is None:  # a usage report that cannot be read (NaN, cut JSON): the usage is unknown
                    self.usage = None
                    data_ = {}
                usage = (data_.get("message") or {}).get("usage") if name == "message_start" else data_.get("usage")
                if isinstance(usage, dict):
                    self.usage = merge_usage(self._counts, usage, name == "message_start")
                if name == "message_delta":
                    self._held = []
            elif name == "message_stop":
                self.done = True
            elif name == "error":
                self._error = stream_error(self._provider, _loads(payload))
                self.done = True
                out.append(block)
                continue
            if self._held is not None:
                self._held.append(block)
            else:
                out.append(block)
        return b"".join(out)

    def end(self) -> bytes:
        if self._error is not None:
            raise self._error
        if not self.done and self._held is None:
            raise ProxyError(502, "upstream stream ended before it was complete", code="upstream_stream_cut")
        return b""

    def finish(self, call: Call) -> bytes:
        held = self._held or []
        if not self.done:
            held.append(event("message_stop", {}))
        if not call.billing.usage_extra:
            return b"".join(held)
        out = []
        for block in held:
            name, payload = parse_event(block)
            if name == "message_delta":
                data = {"type": "message_delta", **_loads(payload)}
                billing = call.billing
                # The gateway's count when it made one (the upstream's could not be used), else the upstream's.
                told = (usage_to_anthropic(billing.usage) if billing.usage_estimated and billing.usage is not None
                        else data.get("usage") or {})
                data["usage"] = {**told, **billing.usage_extra}
                block = named_event(b"message_delta", orjson.dumps(data))
            out.append(block)
        return b"".join(out)

    def fail(self, error: ProxyError) -> bytes:
        if error is self._error:
            return b""  # the client already has the upstream's error event
        return error.sse_event("anthropic")


class AnthropicEncoder:
    """Canonical chunks -> Anthropic Messages events."""

    __slots__ = ("_with_thinking", "_started", "_open", "_kind", "_next", "_tools", "_stop")

    def __init__(self, with_thinking: bool = False) -> None:
        self._with_thinking = with_thinking
        self._started = False
        self._open: int | None = None  # index of the open content block
        self._kind: str | None = None
        self._next = 0
        self._tools: dict[int, int] = {}  # tool-call index -> block index
        self._stop = "end_turn"

    def _start(self, chunk: dict | None) -> bytes:
        self._started = True
        chunk = chunk or {}
        message = {"id": message_id(chunk.get("id")), "type": "message", "role": "assistant",
                   "model": chunk.get("model") or "", "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return event("message_start", {"message": message})

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(event("content_block_stop", {"index": self._open}))
            self._open = self._kind = None

    def _block(self, kind: str, block: dict, out: list[bytes]) -> int:
        self._close(out)
        index = self._open = self._next
        self._kind = kind
        self._next += 1
        out.append(event("content_block_start", {"index": index, "content_block": block}))
        return index

    def encode(self, chunks: list[dict]) -> bytes:
        out: list[bytes] = []
        for chunk in chunks:
            if not self._started:
                out.append(self._start(chunk))
            for choice in chunk.get("choices") or []:
                if choice.get("index", 0) == 0:
                    self._choice(choice, out)
        return b"".join(out)

    def _choice(self, choice: dict, out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        thinking = delta.get("reasoning_content")
        if thinking and self._with_thinking:
            if self._kind != "thinking":
                self._block("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
            out.append(event("content_block_delta", {"index": self._open,
                                                     "delta": {"type": "thinking_delta", "thinking": thinking}}))
        text = delta.get("content")
        if text:
            if self._kind != "text":
                self._block("text", {"type": "text", "text": ""}, out)
            out.append(event("content_block_delta", {"index": self._open,
                                                     "delta": {"type": "text_delta", "text": text}}))
        for call in delta.get("tool_calls") or []:
            self._tool_call(call, out)
        if choice.get("finish_reason"):
            self._close(out)
            self._stop = STOP_REASONS.get(choice["finish_reason"], "end_turn")

    def _tool_call(self, call: dict, out: list[bytes]) -> None:
        n = call.get("index", 0)
        fn = call.get("function") or {}
        if n not in self._tools:
            block = {"type": "tool_use", "id": call.get("id") or f"toolu_{n}", "name": fn.get("name") or "",
                     "input": {}}
            self._tools[n] = self._block("tool", block, out)
        fragment = fn.get("arguments")
        if fragment:
            out.append(event("content_block_delta", {"index": self._tools[n],
                                                     "delta": {"type": "input_json_delta", "partial_json": fragment}}))

    def finish(self, call: Call, usage: Usage | None) -> bytes:
        out = [] if self._started else [self._start(None)]
        self._close(out)
        body = {**usage_to_anthropic(usage), **call.billing.usage_extra}
        out.append(event("message_delta", {"delta": {"stop_reason": self._stop, "stop_sequence": None},
                                           "usage": body}))
        out.append(event("message_stop", {}))
        return b"".join(out)

    def fail(self, error: ProxyError) -> bytes:
        return error.sse_event("anthropic")


def _loads(payload: bytes) -> dict:
    return load_event_json(payload) or {}
