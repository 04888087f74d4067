"""Anthropic Messages answers -> canonical (OpenAI) completions and chunks.

Usage: Anthropic's ``input_tokens`` excludes cache reads and cache writes, so
the canonical prompt count is the sum of the three; ``cached_tokens`` is the
cache reads. ``output_tokens`` includes thinking (Anthropic does not split it
out, so ``reasoning_tokens`` stays 0). In streams, ``message_delta`` carries
the final cumulative counts: they replace, never add to, ``message_start``'s.

Thinking text becomes ``reasoning_content`` (the extension field many OpenAI
clients read); signatures and redacted thinking are dropped.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy import ProxyError, Usage
from proxy.provider import upstream_error
from proxy.sse import EventReader

from .translate import dumps_text

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "tool_use": "tool_calls",
                  "max_tokens": "length", "model_context_window_exceeded": "length", "refusal": "content_filter"}
# Mid-stream error types -> the status the same error has outside a stream.
ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500, "invalid_request_error": 400,
                "authentication_error": 401, "permission_error": 403, "not_found_error": 404,
                "request_too_large": 413, "timeout_error": 504, "billing_error": 402}


def usage_from_anthropic(usage: Any) -> Usage | None:
    """An Anthropic usage object as canonical Usage; None when absent or malformed. Without
    ``output_tokens`` the output count is unknown (``Usage.completion_unknown``: counted),
    without ``input_tokens`` the prompt count (``Usage.prompt_unknown``)."""
    if not isinstance(usage, dict) or ("input_tokens" not in usage and "output_tokens" not in usage):
        return None  # naming neither count is not a usage of zero (that would make output free)
    count, detail = Usage.count, Usage.detail_count
    try:
        read = detail(usage.get("cache_read_input_tokens"))
        written = detail(usage.get("cache_creation_input_tokens"))
        prompt = count(usage.get("input_tokens", 0)) + written + read
        if "output_tokens" not in usage:
            return Usage(prompt_tokens=prompt, cached_tokens=read, cache_write_tokens=written, completion_unknown=True)
        return Usage(prompt_tokens=prompt, completion_tokens=count(usage["output_tokens"]),
                     cached_tokens=read, cache_write_tokens=written, prompt_unknown="input_tokens" not in usage)
    except ValueError:
        return None


def merge_usage(counts: dict[str, Any], usage: dict, start: bool = False) -> Usage | None:
    """A stream's usage after one more report (``message_start``'s, then ``message_delta``'s),
    merged into ``counts``: counts are cumulative, and a field a report leaves out or sends as
    null keeps the last value, but for ``output_tokens``: only message_delta's is the output's
    count (message_start's is a placeholder, 1), so until one names it the output count is
    unknown (counted), and null there is no count: the usage is unknown."""
    counts.update({k: v for k, v in usage.items() if v is not None or k == "output_tokens"})
    if start:
        counts.pop("output_tokens", None)
    return usage_from_anthropic(counts)


def message_to_completion(msg: dict, json_tool: str | None) -> dict:
    """A whole Anthropic message as a canonical chat.completion."""
    text: list[str] = []
    reasoning: list[str] = []
    tool_calls = []
    for block in msg.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
        elif kind == "tool_use":
            if json_tool is not None and block.get("name") == json_tool:
                text.append(dumps_text(block.get("input") or {}))
                continue
            tool_calls.append({"id": block.get("id"), "type": "function",
                               "function": {"name": block.get("name"),
                                            "arguments": dumps_text(block.get("input") or {})}})
    finish = FINISH_REASONS.get(msg.get("stop_reason"), "stop")
    if finish == "tool_calls" and not tool_calls:
        finish = "stop"  # the only tool was the JSON-output one
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not tool_calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = usage_from_anthropic(msg.get("usage"))
    completion = {"id": msg.get("id") or "msg", "object": "chat.completion", "created": int(time.time()),
                  "model": msg.get("model") or "",
                  "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]}
    if usage is not None:
        completion["usage"] = usage.to_openai()
    return completion


def stream_error(provider: str, event: dict) -> ProxyError:
    """An in-band ``error`` event as the gateway's error."""
    err = event.get("error") if isinstance(event.get("error"), dict) else {}
    status = ERROR_STATUS.get(err.get("type"), 500)
    message = err.get("message") if isinstance(err.get("message"), str) else None
    mapped = upstream_error(provider, status, {}, message)
    mapped.message = "mid-stream: " + mapped.message
    return mapped


class AnthropicStreamDecoder:
    """Anthropic SSE events -> canonical chunks.

    Tool calls are numbered by the decoder (0, 1, ...): Anthropic's block
    index also counts text and thinking blocks, and OpenAI clients use the
    tool-call index to assemble arguments.
    """

    __slots__ = ("usage", "done", "_provider", "_json_tool", "_reader", "_head", "_blocks", "_tools",
                 "_finished", "_counts", "_error")

    def __init__(self, provider: str, json_tool: str | None = None) -> None:
        self.usage: Usage | None = None
        self.done = False
        self._provider = provider
        self._json_tool = json_tool
        self._reader = EventReader()
        self._head: dict = {"id": "msg", "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": ""}
        # block index -> [kind, tool index or None, fragments seen]
        self._blocks: dict[int, list] = {}
        self._tools = 0
        self._finished = False
        self._counts: dict[str, Any] = {}
        self._error: ProxyError | None = None

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {**self._head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, data: bytes) -> list[dict]:
        out: list[dict] = []
        for name, payload in self._reader.feed(data):
            if self.done:
                break
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                if name in ("message_start", "message_delta"):  # a usage report that cannot be read
                    self._event(name, {}, out)
                    self.usage = None  # (unknown: counted, unless a later report can be read)
                continue
            if isinstance(event, dict):
                self._event(event.get("type") or name, event, out)
        return out

    def _event(self, kind: str, event: dict, out: list[dict]) -> None:
        if kind == "content_block_delta":
            self._delta(event, out)
        elif kind == "message_start":
            msg = event.get("message") or {}
            self._head["id"] = msg.get("id") or "msg"
            self._head["model"] = msg.get("model") or ""
            self._merge_usage(msg.get("usage"), start=True)
            out.append(self._chunk({"role": "assistant", "content": ""}))
        elif kind == "content_block_start":
            self._block_start(event, out)
        elif kind == "content_block_stop":
            block = self._blocks.get(event.get("index"))
            if block is not None and block[0] == "tool" and not block[2]:
                # A tool block with no JSON fragments: its arguments are {}.
                out.append(self._chunk({"tool_calls": [{"index": block[1], "function": {"arguments": "{}"}}]}))
            elif block is not None and block[0] == "json" and not block[2]:
                out.append(self._chunk({"content": "{}"}))
        elif kind == "message_delta":
            self._merge_usage(event.get("usage"))
            reason = (event.get("delta") or {}).get("stop_reason")
            finish = FINISH_REASONS.get(reason, "stop")
            if finish == "tool_calls" and not self._tools:
                finish = "stop"
            self._finished = True
            out.append(self._chunk({}, finish))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            # Raised from finish(), so the chunks decoded before it still reach the client.
            self._error = stream_error(self._provider, event)
            self.done = True
        # ping and event types added later are ignored, as Anthropic asks.

    def _merge_usage(self, usage: Any, start: bool = False) -> None:
        if isinstance(usage, dict):
            self.usage = merge_usage(self._counts, usage, start)

    def _block_start(self, event: dict, out: list[dict]) -> None:
        block = event.get("content_block") or {}
        index = event.get("index")
        kind = block.get("type")
        if kind == "tool_use":
            if self._json_tool is not None and block.get("name") == self._json_tool:
                self._blocks[index] = ["json", None, False]
                return
            self._blocks[index] = ["tool", self._tools, False]
            out.append(self._chunk({"tool_calls": [{"index": self._tools, "id": block.get("id"), "type": "function",
                                                    "function": {"name": block.get("name"), "arguments": ""}}]}))
            self._tools += 1
        elif kind == "text":
            self._blocks[index] = ["text", None, False]
            if block.get("text"):
                out.append(self._chunk({"content": block["text"]}))
        elif kind == "thinking":
            self._blocks[index] = ["thinking", None, False]
            if block.get("thinking"):
                out.append(self._chunk({"reasoning_content": block["thinking"]}))
        else:
            self._blocks[index] = [kind, None, False]

    def _delta(self, event: dict, out: list[dict]) -> None:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        block = self._blocks.get(event.get("index"))
        if kind == "text_delta":
            if delta.get("text"):
                out.append(self._chunk({"content": delta["text"]}))
        elif kind == "input_json_delta":
            fragment = delta.get("partial_json") or ""
            if not fragment or block is None:
                return
            block[2] = True
            if block[0] == "json":
                out.append(self._chunk({"content": fragment}))
            else:
                out.append(self._chunk({"tool_calls": [{"index": block[1], "function": {"arguments": fragment}}]}))
        elif kind == "thinking_delta" and delta.get("thinking"):
            out.append(self._chunk({"reasoning_content": delta["thinking"]}))
        # signature_delta and citations are dropped: OpenAI has no field for them.

    def finish(self) -> list[dict]:
        if self._error is not None:
            raise self._error
        if not self.done and not self._finished:
            raise ProxyError(502, f"upstream '{self._provider}' stream ended before it was complete",
                             code="upstream_stream_cut")
        return []
