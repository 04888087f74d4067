"""The built-in mock provider (``kind: mock``): deterministic answers, no network.

It echoes the last user message (or says ``reply`` when configured), streams
it a word per chunk with configurable delays, and reports usage like a real
upstream. It goes through the same pipeline as a real provider: it speaks
OpenAI, so OpenAI clients get a byte passthrough of its stream.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import time
from dataclasses import dataclass
from typing import Any

import orjson

from proxy import Call, ProxyError, UpstreamRequest
from proxy.sse import DONE_EVENT, data_event

from .mock_media import mock_media
from .openai import OpenAIProvider

#: The most words the echo answers with, as a model's output cap (a 10 MB prompt echoed a word a
#: stream event held the worker's loop for a minute and a gigabyte).
MAX_REPLY_WORDS = 16384
#: The most numbers an embeddings answer holds (inputs x dimensions): 65,536, ~1.3 MB of JSON.
MAX_EMBEDDING_NUMBERS = 1 << 16


@dataclass(frozen=True)
class MockOptions:
    reply: str | None = None  # fixed reply text; default: echo the last user message
    first_token_delay: float = 0.0  # seconds before the first chunk
    chunk_delay: float = 0.0  # seconds between chunks
    embedding_dimensions: int = 16


class MockProvider(OpenAIProvider):
    kind = "mock"
    Options = MockOptions
    needs_api_key = False

    def family(self, upstream_model: str) -> str:
        return "tollway-mock"

    def __init__(self, name, config, options: MockOptions | None = None) -> None:
        super().__init__(name, config, options or MockOptions())
        self.chat_url = "mock://chat"
        self.embeddings_url = "mock://embeddings"
        self.completions_url = "mock://completions"
        self.base_url = "mock://"  # images and audio: mock:///images/generations...
        # Chat and legacy completions natively; Responses API calls are translated to chat.
        self.native = frozenset(("openai", "completions"))

    async def start(self) -> None:  # no connection pool: nothing leaves the process
        pass

    async def close(self) -> None:
        pass

    async def send(self, call: Call, request: UpstreamRequest) -> MockResponse:
        if request.url.startswith("mock:///"):
            parts, content_type = mock_media(request.url[7:], request)
            return MockResponse(parts, None, content_type)
        body = orjson.loads(request.body)
        if request.url == self.embeddings_url:
            return MockResponse([orjson.dumps(self.embeddings(body))])
        if request.url == self.completions_url:
            return MockResponse(self.completions(body), self.options)
        return MockResponse(self.chat(body), self.options)

    # -- answers ----------------------------------------------------------------------
    def reply_text(self, body: dict) -> str:
        if self.options.reply is not None:
            return self.options.reply
        for message in reversed(body.get("messages") or []):
            if message.get("role") == "user":
                text = _text_of(message.get("content"))
                if text:
                    return text
        return "Hello from tollway's mock provider."

    def chat(self, body: dict) -> list[bytes]:
        text, words, finish = capped(self.reply_text(body))
        prompt_tokens = sum(count_tokens(_text_of(m.get("content"))) + 3 for m in body.get("messages") or [])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words),
                 "prompt_tokens_details": {"cached_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0}}
        model = body.get("model", "mock")
        cid = "chatcmpl-mock-" + hashlib.sha1(text.encode()).hexdigest()[:12]
        created = int(time.time())
        if not body.get("stream"):
            return [orjson.dumps({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage, "system_fingerprint": None})]
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None}

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            return data_event(orjson.dumps({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                  "finish_reason": finish}]}))

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        events.append(chunk({}, finish))
        opts = body.get("stream_options") or {}
        if opts.get("include_usage"):
            events.append(data_event(orjson.dumps({**head, "choices": [], "usage": usage})))
        events.append(DONE_EVENT)
        return events

    def completions(self, body: dict) -> list[bytes]:
        """Legacy completions: the prompt (and suffix) echoed, a word per stream chunk."""
        prompt = body.get("prompt")
        prompt_text = prompt if isinstance(prompt, str) else " ".join(p for p in prompt or () if isinstance(p, str))
        text, words, finish = capped(self.options.reply if self.options.reply is not None else prompt_text or "Hello")
        prompt_tokens = count_tokens(prompt_text) + count_tokens(body.get("suffix") or "")
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        head = {"id": "cmpl-mock-" + hashlib.sha1(text.encode()).hexdigest()[:12], "object": "text_completion",
                "created": int(time.time()), "model": body.get("model", "mock")}
        if not body.get("stream"):
            return [orjson.dumps({**head, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                       "finish_reason": finish}], "usage": usage})]

        def chunk(piece: str, finish: str | None = None) -> bytes:
            return data_event(orjson.dumps({**head, "choices": [{"index": 0, "text": piece, "logprobs": None,
                                                                  "finish_reason": finish}]}))

        events = [chunk(w if i == 0 else " " + w) for i, w in enumerate(words)]
        events.append(chunk("", finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(data_event(orjson.dumps({**head, "choices": [], "usage": usage})))
        events.append(DONE_EVENT)
        return events

    def embeddings(self, body: dict) -> dict:
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dims = body.get("dimensions") or self.options.embedding_dimensions
        if len(items) * dims > MAX_EMBEDDING_NUMBERS:  # (the answer is made on the event loop)
            raise ProxyError(400, f"the mock provider makes at most {MAX_EMBEDDING_NUMBERS} numbers an answer: "
                                  f"{len(items)} input(s) of {dims} dimensions are more; ask for fewer",
                             param="dimensions", code="too_many_dimensions")
        as_base64 = body.get("encoding_format") == "base64"  # the Node SDK's default: float32 LE, base64
        data = [{"object": "embedding", "index": i,
                 "embedding": base64_floats(vector) if as_base64 else vector}
                for i, item in enumerate(items) for vector in (fake_embedding(str(item), dims),)]
        tokens = sum(count_tokens(str(item)) for item in items)
        return {"object": "list", "data": data, "model": body.get("model", "mock"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class MockResponse:
    """Looks like an UpstreamResponse: status, headers, deadline, read_chunk, read_all, release."""

    deadline = math.inf  # no timeouts.total: the answer is in memory

    def __init__(self, parts: list[bytes], options: MockOptions | None = None,
                 content_type: str = "application/json") -> None:
        self.status = 200
        self.headers: dict[str, str] = {"Content-Type": content_type}
        self._parts = parts
        self._i = 0
        self._options = options

    async def read_chunk(self) -> bytes:
        if self._i >= len(self._parts):
            return b""
        if self._options is not None:
            delay = self._options.first_token_delay if self._i == 0 else self._options.chunk_delay
            if delay:
                await asyncio.sleep(delay)
        part = self._parts[self._i]
        self._i += 1
        return part

    async def read_all(self, limit: int = 0) -> bytes:
        parts, self._i = self._parts[self._i:], len(self._parts)
        return b"".join(parts)

    def release(self, settle: bool = False) -> None:
        pass


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters a token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def base64_floats(vector: list[float]) -> str:
    """An embedding as OpenAI sends it for ``encoding_format: base64``: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def capped(text: str) -> tuple[str, list[str], str]:
    """The reply (its text, its words, its finish reason): at most ``MAX_REPLY_WORDS`` words,
    cut as a model's output cap cuts ("length")."""
    words = text.split(" ", MAX_REPLY_WORDS)
    if len(words) <= MAX_REPLY_WORDS:
        return text, words, "stop"
    del words[MAX_REPLY_WORDS:]
    return " ".join(words), words, "length"


def fake_embedding(text: str, dims: int) -> list[float]:
    """A unit vector derived from the text's hash: equal texts, equal vectors."""
    raw = b"".join(hashlib.sha256(f"{counter}:{text}".encode()).digest() for counter in range(-(-dims // 8)))
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dims}I", raw[:dims * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
