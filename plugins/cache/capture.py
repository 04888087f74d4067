"""Rebuild a streamed answer from the bytes written to the client, to store it.

The cache's ``tollway_stream_filter`` returns a ``StreamCapture``: it sees every
write of an OpenAI-dialect stream (and passes the bytes on unchanged), parses
the SSE events and accumulates each choice's role, content, refusal and tool
calls (ids, names, concatenated argument fragments). ``completion()`` is the
equivalent ``chat.completion`` -- but only when the stream ended cleanly:
every choice got a ``finish_reason``, ``[DONE]`` arrived, no in-band error
was seen and nothing was dropped for size. Anything else is not stored.
"""

from __future__ import annotations

import orjson

from proxy.sse import EventSplitter, parse_event, split_events


class _Choice:
    __slots__ = ("role", "content", "refusal", "tools", "finish")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tools: dict[int, dict] = {}
        self.finish: str | None = None


class StreamCapture:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.seen = 0
        self.head: dict = {}
        self.choices: dict[int, _Choice] = {}
        self.done = False
        self.broken = False  # an error event, unparsable data or too large
        self._splitter = EventSplitter()

    def __call__(self, data: bytes) -> bytes:
        if not self.broken:
            try:
                self._feed(data)
            except Exception:  # never break the client's stream for the cache's sake
                self.broken = True
        return data

    def _feed(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > self.max_bytes:
            self.broken = True
            return
        complete = self._splitter.feed(data)
        if not complete:
            return
        for block in split_events(complete):
            _, payload = parse_event(block)
            if not payload:
                continue
            if payload == b"[DONE]":
                self.done = True
                continue
            chunk = orjson.loads(payload)
            if not isinstance(chunk, dict) or "error" in chunk:
                self.broken = True
                return
            if not self.head:
                self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
            for c in chunk.get("choices") or []:
                self._choice(c)

    def _choice(self, c: dict) -> None:
        choice = self.choices.setdefault(int(c.get("index") or 0), _Choice())
        delta = c.get("delta") or {}
        if delta.get("role"):
            choice.role = delta["role"]
        if isinstance(delta.get("content"), str):
            choice.content.append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            choice.refusal.append(delta["refusal"])
        for tc in delta.get("tool_calls") or []:
            slot = choice.tools.setdefault(int(tc.get("index") or 0), {"id": None, "type": "function",
                                                                         "name": "", "args": []})
            if tc.get("id"):
                slot["id"] = tc["id"]
            fn = tc.get("function") or {}
            if fn.get("name"):
                slot["name"] += fn["name"]
            if isinstance(fn.get("arguments"), str):
                slot["args"].append(fn["arguments"])
        if c.get("finish_reason"):
            choice.finish = c["finish_reason"]

    def completion(self) -> dict | None:
        """The whole answer as a chat.completion, or None when the stream was not clean."""
        if self.broken or not self.done or not self.choices:
            return None
        if any(ch.finish is None for ch in self.choices.values()):
            return None
        choices = []
        for index in sorted(self.choices):
            ch = self.choices[index]
            message: dict = {"role": ch.role, "content": "".join(ch.content) if ch.content or not ch.tools else None}
            if ch.refusal:
                message["refusal"] = "".join(ch.refusal)
            if ch.tools:
                message["tool_calls"] = [{"id": t["id"], "type": t["type"],
                                          "function": {"name": t["name"], "arguments": "".join(t["args"])}}
                                         for _, t in sorted(ch.tools.items())]
            choices.append({"index": index, "message": message, "finish_reason": ch.finish})
        return {"id": self.head.get("id") or "chatcmpl-cached", "object": "chat.completion",
                "created": self.head.get("created") or 0, "model": self.head.get("model") or "",
                "choices": choices}
