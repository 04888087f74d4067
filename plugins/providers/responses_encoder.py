"""Canonical chat chunks -> a Responses API event stream, for upstreams that do not
serve the Responses API.

The events an official SDK expects, in order: ``response.created`` and
``response.in_progress``; per output item ``response.output_item.added``, then for
text ``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``, or for a function
call ``response.function_call_arguments.delta``..., ``.done``; then
``response.output_item.done``; and last one terminal event,
``response.completed`` (``response.incomplete`` when the answer hit its length
cap) with the whole response and its usage (and the gateway's ``cost``). Every
event has its ``sequence_number``; no content event comes before its item was
announced.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy import Call, ProxyError, Usage
from proxy.sse import named_event

from .responses_canonical import function_item, message_item, new_id, skeleton, status_of
from .responses_stream import error_event, usage_to_responses


class ResponsesEncoder:
    __slots__ = ("_call", "_seq", "_response", "_output", "_open", "_text", "_calls", "_finish")

    def __init__(self, call: Call) -> None:
        self._call = call
        self._seq = 0
        self._response: dict | None = None
        self._output: list[dict] = []  # finished items
        self._open: dict | None = None  # the item being streamed (message or function call)
        self._text: list[str] = []
        self._calls: dict[int, dict] = {}  # canonical tool-call index -> its function_call item
        self._finish: str | None = None

    def _event(self, name: str, data: dict[str, Any]) -> bytes:
        event = named_event(name.encode(), orjson.dumps({"type": name, **data, "sequence_number": self._seq}))
        self._seq += 1
        return event

    def _start(self, chunk: dict) -> list[bytes]:
        created = chunk.get("created")
        self._response = skeleton(self._call, new_id("resp"), chunk.get("model") or self._call.model,
                                  created if isinstance(created, int) else int(time.time()))
        head = {**self._response, "status": "in_progress", "output": [], "usage": None}
        return [self._event("response.created", {"response": head}),
                self._event("response.in_progress", {"response": head})]

    def encode(self, chunks: list[dict]) -> bytes:
        out: list[bytes] = []
        for chunk in chunks:
            if self._response is None:
                out += self._start(chunk)
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if isinstance(text, str) and text:
                    out += self._text_delta(text)
                for tool_call in delta.get("tool_calls") or ():
                    out += self._tool_delta(tool_call)
                if choice.get("finish_reason"):
                    self._finish = choice["finish_reason"]
        return b"".join(out)

    def _text_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open is None or self._open["type"] != "message":
            out += self._close()
            self._open = message_item(new_id("msg"), "", "in_progress")
            self._open["content"] = []
            self._text = []
            out.append(self._event("response.output_item.added", {"output_index": len(self._output),
                                                                  "item": self._open}))
            out.append(self._event("response.content_part.added", {
                **self._ids(), "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}))
        self._text.append(text)
        out.append(self._event("response.output_text.delta", {**self._ids(), "delta": text, "logprobs": []}))
        return out

    def _tool_delta(self, tool_call: dict) -> list[bytes]:
        out: list[bytes] = []
        index = tool_call.get("index", 0)
        fn = tool_call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            out += self._close()
            item = self._calls[index] = function_item(new_id("fc"), tool_call.get("id") or new_id("call"),
                                                      fn.get("name") or "", "", "in_progress")
            self._open = item
            out.append(self._event("response.output_item.added", {"output_index": len(self._output), "item": item}))
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments and item is self._open:
            item["arguments"] += arguments
            out.append(self._event("response.function_call_arguments.delta", {
                "item_id": item["id"], "output_index": len(self._output), "delta": arguments}))
        return out

    def _ids(self) -> dict:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self._output), "content_index": 0}

    def _close(self) -> list[bytes]:
        item = self._open
        if item is None:
            return []
        out: list[bytes] = []
        if item["type"] == "message":
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out.append(self._event("response.output_text.done", {**self._ids(), "text": text, "logprobs": []}))
            out.append(self._event("response.content_part.done", {**self._ids(), "part": part}))
            done = message_item(item["id"], text)
        else:
            item["arguments"] = item["arguments"] or "{}"
            out.append(self._event("response.function_call_arguments.done", {
                "item_id": item["id"], "output_index": len(self._output), "arguments": item["arguments"]}))
            done = {**item, "status": "completed"}
        out.append(self._event("response.output_item.done", {"output_index": len(self._output), "item": done}))
        self._output.append(done)
        self._open = None
        return out

    def finish(self, call: Call, usage: Usage | None) -> bytes:
        usage = usage or call.billing.usage
        out = [] if self._response is not None else self._start({})
        out += self._close()
        status, details = status_of(self._finish)
        response = {**(self._response or {}), "status": status, "incomplete_details": details,
                    "output": self._output, "usage": None}
        if usage is not None:
            response["usage"] = {**usage_to_responses(usage), **call.billing.usage_extra}
        out.append(self._event(f"response.{status}", {"response": response}))
        return b"".join(out)

    def fail(self, error: ProxyError) -> bytes:
        return error_event(error, self._seq)
