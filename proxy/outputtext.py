"""The generated text inside answers the gateway already sent: what a token
estimate counts when the upstream never said how many tokens it produced.

Read only off the normal path (see ``Billing.streamed``): the stream's
bytes are kept by reference while it runs and parsed here once, at the end,
only when its usage turned out to be missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from .sse import parse_event, split_events

__all__ = ["completion_text", "openai_stream_text", "prompt_text", "sse_payloads", "transcript_text"]


def sse_payloads(blob: bytes) -> Iterator[dict]:
    """Every JSON object carried in the ``data:`` of the SSE events in ``blob``."""
    for block in split_events(blob):
        _, data = parse_event(block)
        if not data or data == b"[DONE]":
            continue
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value


def _list(value: object) -> list:
    """``value`` if it is a list, else nothing to iterate (an upstream may send anything)."""
    return value if isinstance(value, list) else []


def _function_text(function: object, out: list[str]) -> None:
    if isinstance(function, dict):
        for field in ("name", "arguments"):
            value = function.get(field)
            if isinstance(value, str):
                out.append(value)


def openai_stream_text(blob: bytes) -> str:
    """Content, reasoning, refusals and tool calls of OpenAI chat chunks."""
    out: list[str] = []
    for chunk in sse_payloads(blob):
        for choice in _list(chunk.get("choices")):
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            for field in ("content", "reasoning_content", "reasoning", "refusal"):
                value = delta.get(field)
                if isinstance(value, str):
                    out.append(value)
            for tool_call in _list(delta.get("tool_calls")):
                if isinstance(tool_call, dict):
                    _function_text(tool_call.get("function"), out)
    return "".join(out)


def completion_text(completion: dict) -> str:
    """Content, reasoning, refusals and tool calls of a whole OpenAI chat.completion."""
    out: list[str] = []
    for choice in _list(completion.get("choices")):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        for field in ("content", "reasoning_content", "reasoning", "refusal"):
            value = message.get(field)
            if isinstance(value, str):
                out.append(value)
        for tool_call in _list(message.get("tool_calls")):
            if isinstance(tool_call, dict):
                _function_text(tool_call.get("function"), out)
    return "".join(out)


def prompt_text(body: dict) -> str:
    """The text a request sends to be read: every string in its messages,
    system prompt and tools, except inline data (images, audio), which
    tokenizers count differently and the reservation bounds anyway."""
    out: list[str] = []
    for field in ("messages", "system", "instructions", "tools", "input", "prompt", "suffix"):
        _strings(body.get(field), out)
    return "\n".join(out)


def _strings(value: object, out: list[str]) -> None:
    if isinstance(value, str):
        if not value.startswith("data:") or len(value) < 256:
            out.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in ("data", "image_url", "input_audio", "file_data", "source"):
                _strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out)


#: Transcript formats that carry cue numbers and times around the text (not output the model wrote).
SUBTITLE_FORMATS = frozenset(("srt", "vtt"))


def transcript_text(answer: dict | None, response_format: object = "json") -> str | None:
    """The text of a transcription or translation answer (``answer["text"]``: the json and
    verbose_json answers' field, or a text, srt or vtt answer as received); for srt and vtt
    without their cue numbers, times and headers. None when the answer holds no text."""
    text = answer.get("text") if answer is not None else None
    if not isinstance(text, str):
        return None
    if response_format not in SUBTITLE_FORMATS:
        return text
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.isdigit() or "-->" in line or line.startswith(("WEBVTT", "NOTE")):
            continue
        lines.append(line)
    return "\n".join(lines)
