"""Gemini generateContent answers -> canonical (OpenAI) completions and chunks.

- Text parts -> content; ``thought: true`` parts -> ``reasoning_content``.
- ``functionCall`` parts arrive whole: one tool-call delta with the full
  arguments; ids are the gateway's (with the call's thought signature kept
  in the id, see ``gemini_request``).
- finishReason: Gemini says STOP after a function call; the answer is
  ``tool_calls`` whenever a call was seen. In streams the call and the STOP can
  come in different chunks, so the finishing chunk is only written when the
  stream ends (Gemini's SSE stream has no terminator: its end is the end).
- usageMetadata: prompt = promptTokenCount (cached included), completion =
  candidatesTokenCount + thoughtsTokenCount, reasoning = thoughtsTokenCount,
  cached = cachedContentTokenCount; without candidatesTokenCount the output
  count is unknown (``Usage.completion_unknown``: what went out is counted),
  without promptTokenCount the prompt count (``Usage.prompt_unknown``).
  Streams repeat it as running totals: the last one wins (one that cannot be
  read: the usage is unknown); a chunk without it changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy import ProxyError, Usage
from proxy.provider import upstream_error
from proxy.sse import EventReader

from .gemini_request import SIGNATURE_SEP
from .translate import dumps_text, new_id

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
                  "RECITATION": "content_filter", "PROHIBITED_CONTENT": "content_filter",
                  "BLOCKLIST": "content_filter", "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
                  "LANGUAGE": "content_filter"}
# google.rpc status -> the HTTP status Gemini uses for it (for in-band errors).
RPC_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "PERMISSION_DENIED": 403,
              "UNAUTHENTICATED": 401, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "INTERNAL": 500,
              "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def usage_from_gemini(meta: Any) -> Usage | None:
    """``usageMetadata`` as Usage; None when it is not an object, names neither count (not a
    usage of zero: that would make output free), or holds a count that is not one (``Usage.count``)."""
    if not isinstance(meta, dict) or ("promptTokenCount" not in meta and "candidatesTokenCount" not in meta):
        return None
    count, detail = Usage.count, Usage.detail_count
    try:
        thoughts = detail(meta.get("thoughtsTokenCount"))
        # Without candidatesTokenCount the output count is unknown (counted), its thoughts the floor.
        unknown = "candidatesTokenCount" not in meta
        return Usage(prompt_tokens=count(meta.get("promptTokenCount", 0)) + detail(meta.get("toolUsePromptTokenCount")),
                     completion_tokens=thoughts if unknown else count(meta["candidatesTokenCount"]) + thoughts,
                     cached_tokens=detail(meta.get("cachedContentTokenCount")), reasoning_tokens=thoughts,
                     completion_unknown=unknown, prompt_unknown="promptTokenCount" not in meta)
    except ValueError:
        return None


def tool_call(part: dict, index: int | None = None) -> dict:
    call = part["functionCall"]
    call_id = call.get("id") or new_id("call_")
    if part.get("thoughtSignature"):
        call_id += SIGNATURE_SEP + part["thoughtSignature"]
    out = {"id": call_id, "type": "function",
           "function": {"name": call.get("name") or "", "arguments": dumps_text(call.get("args") or {})}}
    if index is not None:
        out = {"index": index, **out}
    return out


def finish_reason(reason: Any, saw_call: bool) -> str:
    if saw_call and reason in (None, "STOP"):
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop")


def blocked(data: dict) -> bool:
    """The prompt itself was blocked: no candidates, a block reason."""
    return not data.get("candidates") and bool((data.get("promptFeedback") or {}).get("blockReason"))


def response_to_completion(data: dict, model: str) -> dict:
    candidate = (data.get("candidates") or [{}])[0]
    text, reasoning, calls = [], [], []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if "functionCall" in part:
            calls.append(tool_call(part))
        elif isinstance(part.get("text"), str):
            (reasoning if part.get("thought") else text).append(part["text"])
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    reason = "content_filter" if blocked(data) else finish_reason(candidate.get("finishReason"), bool(calls))
    completion = {"id": "chatcmpl-" + (data.get("responseId") or new_id("")), "object": "chat.completion",
                  "created": int(time.time()), "model": data.get("modelVersion") or model,
                  "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}]}
    usage = usage_from_gemini(data.get("usageMetadata"))
    if usage is not None:
        completion["usage"] = usage.to_openai()
    return completion


def stream_error(provider: str, error: Any) -> ProxyError:
    err = error if isinstance(error, dict) else {}
    status = err.get("code") if isinstance(err.get("code"), int) else RPC_STATUS.get(err.get("status"), 500)
    message = err.get("message") if isinstance(err.get("message"), str) else None
    mapped = upstream_error(provider, status, {}, message)
    mapped.message = "mid-stream: " + mapped.message
    return mapped


class GeminiStreamDecoder:
    """Gemini ``streamGenerateContent?alt=sse`` events -> canonical chunks."""

    __slots__ = ("usage", "done", "_provider", "_reader", "_head", "_started", "_tools", "_reason", "_blocked",
                 "_error")

    def __init__(self, provider: str, model: str) -> None:
        self.usage: Usage | None = None
        self.done = False  # only an in-band error sets it: Gemini streams just end
        self._provider = provider
        self._reader = EventReader()
        self._head = {"id": "chatcmpl-" + new_id(""), "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": model}
        self._started = False
        self._tools = 0
        self._reason: str | None = None
        self._blocked = False
        self._error: ProxyError | None = None

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {**self._head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, data: bytes) -> list[dict]:
        out: list[dict] = []
        for _, payload in self._reader.feed(data):
            if self.done:
                break
            self._event(payload, out)
        return out

    def _event(self, payload: bytes, out: list[dict]) -> None:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            if b'"usageMetadata"' in payload:  # a usage report that cannot be read (NaN, cut JSON): unknown usage
                self.usage = None
            return
        if isinstance(data, list):  # a JSON-array stream element, if one ever comes
            data = data[0] if data and isinstance(data[0], dict) else {}
        if not isinstance(data, dict):
            return
        if "error" in data:
            # Raised from finish(), so the chunks decoded before it still reach the client.
            self._error = stream_error(self._provider, data["error"])
            self.done = True
            return
        if not self._started:
            self._started = True
            if data.get("modelVersion"):
                self._head["model"] = data["modelVersion"]
            if data.get("responseId"):
                self._head["id"] = "chatcmpl-" + data["responseId"]
            out.append(self._chunk({"role": "assistant", "content": ""}))
        if "usageMetadata" in data:  # running totals: the last report counts; one unusable: unknown usage
            self.usage = usage_from_gemini(data["usageMetadata"])
        if blocked(data):
            self._blocked = True
        candidate = (data.get("candidates") or [{}])[0]
        for part in (candidate.get("content") or {}).get("parts") or []:
            if "functionCall" in part:
                out.append(self._chunk({"tool_calls": [tool_call(part, self._tools)]}))
                self._tools += 1
            elif isinstance(part.get("text"), str) and part["text"]:
                key = "reasoning_content" if part.get("thought") else "content"
                out.append(self._chunk({key: part["text"]}))
        if candidate.get("finishReason"):
            self._reason = candidate["finishReason"]

    def finish(self) -> list[dict]:
        if self._error is not None:
            raise self._error
        out: list[dict] = []
        for _, payload in self._reader.close():  # an event the upstream left unterminated
            self._event(payload, out)
        if self._reason is None and not self._blocked:
            raise ProxyError(502, f"upstream '{self._provider}' stream ended before it was complete",
                             code="upstream_stream_cut")
        if not self._started:
            out.append(self._chunk({"role": "assistant", "content": ""}))
        reason = "content_filter" if self._blocked else finish_reason(self._reason, self._tools > 0)
        out.append(self._chunk({}, reason))
        return out
