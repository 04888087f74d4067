"""Responses API streams passed through (OpenAI upstream -> Responses client).

Events go to the client as the upstream sent them. Usage arrives only on the
one terminal event (``response.completed``, ``response.incomplete`` or
``response.failed``): that event is held back until the stream is priced, then
written with the gateway's usage fields (``cost``...) spliced into its
``response.usage``, so a stream is billed whichever way it ends (an incomplete
or failed answer still used tokens). A stream that stops before its terminal
event is cut: the core bills what went out (``streamed_text``) and the client
gets an ``error`` event in the Responses shape.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy import Call, ProxyError, Usage
from proxy.outputtext import sse_payloads
from proxy.provider import RESPONSE_ID
from proxy.sse import EventSplitter, load_event_json, named_event, parse_event, split_events

TERMINAL = frozenset(("response.completed", "response.incomplete", "response.failed"))
# An event whose type the passthrough must read: a terminal one, or the upstream's own error.
_LIFECYCLE = re.compile(rb'"type"\s*:\s*"(?:response\.(?:completed|incomplete|failed)|error)"')
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def usage_from_responses(usage: Any) -> Usage | None:
    """A Responses ``usage`` object (input/output tokens and their details) as Usage;
    None when it names neither count. Without ``output_tokens`` the output count is
    unknown (``Usage.completion_unknown``: counted), the reasoning tokens named its floor;
    without ``input_tokens`` the prompt count (``Usage.prompt_unknown``)."""
    if not isinstance(usage, dict) or ("input_tokens" not in usage and "output_tokens" not in usage):
        return None
    count, detail = Usage.count, Usage.detail_count
    try:
        reasoning = detail((usage.get("output_tokens_details") or {}).get("reasoning_tokens"))
        unknown = "output_tokens" not in usage
        return Usage(prompt_tokens=count(usage.get("input_tokens", 0)),
                     completion_tokens=reasoning if unknown else count(usage["output_tokens"]),
                     cached_tokens=detail((usage.get("input_tokens_details") or {}).get("cached_tokens")),
                     reasoning_tokens=reasoning, completion_unknown=unknown,
                     prompt_unknown="input_tokens" not in usage)
    except (ValueError, AttributeError):
        return None


def usage_to_responses(usage: Usage) -> dict:
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens}


def error_event(error: ProxyError, sequence_number: int) -> bytes:
    """A Responses stream ``error`` event (the shape the official SDKs read)."""
    body = error.add_styled_fields({"type": "error", "code": error.code, "message": error.message,
                                    "param": error.param}, error.style)
    body["sequence_number"] = sequence_number
    return named_event(b"error", orjson.dumps(body))


def stream_text(blob: bytes) -> str:
    """The text, refusals, reasoning and function-call arguments of a Responses stream."""
    out: list[str] = []
    for event in sse_payloads(blob):
        kind = event.get("type")
        if isinstance(kind, str) and kind.endswith(".delta"):
            delta = event.get("delta")
            if isinstance(delta, str):
                out.append(delta)
        elif kind == "response.output_item.added":
            item = event.get("item")
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                out.append(item["name"])
    return "".join(out)


def answer_text(response: dict) -> str:
    """The text, refusals, reasoning summaries and function calls of a whole ``response``."""
    out: list[str] = []
    output = response.get("output")
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        for name in ("name", "arguments"):
            if isinstance(item.get(name), str):
                out.append(item[name])
        for key in ("content", "summary"):
            parts = item.get(key)
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict):
                    text = part.get("text", part.get("refusal"))
                    if isinstance(text, str):
                        out.append(text)
    return "".join(out)


class ResponsesPassthrough:
    """OpenAI Responses upstream -> Responses client, byte for byte."""

    __slots__ = ("usage", "done", "_call", "_splitter", "_held", "_last", "_error")

    def __init__(self, call: Call) -> None:
        self.usage: Usage | None = None
        self.done = False
        self._call = call
        self._splitter = EventSplitter()
        self._held: tuple[bytes, str, dict] | None = None  # the terminal event: bytes, name, parsed
        self._last = b""  # the last events passed (for the next sequence number)
        # The upstream's own in-band error: forwarded as sent, and reported to the core
        # (end() raises it) so the call is recorded as failed; fail() then adds nothing.
        self._error: ProxyError | None = None

    def feed(self, data: bytes) -> bytes:
        complete = self._splitter.feed(data)
        if not complete or self.done:
            return b""
        if _LIFECYCLE.search(complete) is None:  # content events only: the usual case
            self._last = complete
            return complete
        out = []
        for block in split_events(complete):
            if self.done:
                break
            if _LIFECYCLE.search(block) is not None:
                name, payload = parse_event(block)
                event = load_event_json(payload)
                kind = event.get("type") if event is not None else None
                if kind in TERMINAL:
                    response = event.get("response") if isinstance(event.get("response"), dict) else {}
                    self.usage = usage_from_responses(response.get("usage"))
                    if isinstance(response.get("id"), str):
                        self._call.state[RESPONSE_ID] = response["id"]
                    self._held = (block, name or kind, event)
                    self.done = True
                    continue
                if kind == "error":  # the upstream's own error: forwarded; it ends the stream
                    self.done = True
                    message = event.get("message") if event is not None else None
                    self._error = ProxyError(502, f"upstream error mid-stream: {message or 'unknown'}",
                                             code="upstream_stream_error")
            out.append(block)
        sent = b"".join(out)
        if sent:
            self._last = sent
        return sent

    def end(self) -> bytes:
        if self._error is not None:
            raise self._error
        if not self.done:
            raise ProxyError(502, "upstream stream ended before its terminal event (response.completed)",
                             code="upstream_stream_cut")
        return b""

    def finish(self, call: Call) -> bytes:
        if self._held is None:
            return b""
        block, name, event = self._held
        extra = call.billing.usage_extra
        if not extra:
            return block
        _, payload = parse_event(block)
        response = event.get("response")
        # The upstream's usage, with the gateway's fields spliced in; the count billed when the
        # gateway made one (the upstream's was unusable, or named no output count).
        if self.usage is not None and not call.billing.usage_estimated and len(_USAGE_OBJECT.findall(payload)) == 1:
            fields = orjson.dumps(extra)[1:-1]
            at = _USAGE_OBJECT.search(payload).end()  # type: ignore[union-attr]
            closes = payload[at:at + 64].lstrip()[:1] == b"}"
            payload = payload[:at] + fields + (b"" if closes else b",") + payload[at:]
        elif isinstance(response, dict):
            usage = call.billing.usage
            response["usage"] = {**(usage_to_responses(usage) if usage is not None else {}), **extra}
            payload = orjson.dumps(event)
        return named_event(name.encode(), payload)

    def fail(self, error: ProxyError) -> bytes:
        if error is self._error:  # the client has the upstream's own error event already
            return b""
        numbers = _SEQUENCE.findall(self._last)
        return error_event(error, int(numbers[-1]) + 1 if numbers else 0)

