"""Any OpenAI-compatible upstream (``kind: openai``): base_url + api_key.

For OpenAI clients this is a passthrough: the body goes up as sent (model name
swapped, stream usage always requested) and the answer comes back byte for
byte. For clients of other dialects, the canonical body goes up and the
answer is decoded into canonical chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

import orjson

from proxy import Call, Provider, ProxyError, Route, UpstreamRequest, Usage
from proxy.provider import UPLOAD, loads_json
from proxy.sse import EventReader


@dataclass(frozen=True)
class OpenAIOptions:
    # The name a translated request's output cap goes up under: OpenAI's current
    # max_completion_tokens (its reasoning models refuse max_tokens), or
    # max_tokens for OpenAI-compatible servers that only know the old name.
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    # False for an OpenAI-compatible server that knows only Chat Completions: Responses API
    # requests to it are translated (through the canonical form) instead of passed through.
    responses_api: bool = True


# The family of a model behind an OpenAI-compatible API: by its name, else by the API's host.
MODEL_FAMILIES = ((("gpt-", "o1", "o3", "o4", "chatgpt", "dall-e", "whisper", "tts-", "text-embedding", "davinci",
                    "babbage", "gpt-image", "codex"), "openai"), (("claude",), "anthropic"),
                  (("gemini", "gemma"), "google"), (("llama", "meta-llama"), "meta"),
                  (("mistral", "mixtral", "codestral"), "mistral"), (("deepseek",), "deepseek"),
                  (("qwen",), "alibaba"), (("grok",), "xai"), (("command",), "cohere"))
HOST_FAMILIES = (("openai.com", "openai"), ("openai.azure.com", "openai"), ("deepseek.com", "deepseek"),
                 ("mistral.ai", "mistral"), ("x.ai", "xai"), ("cohere.com", "cohere"))


class OpenAIProvider(Provider):
    kind = "openai"
    dialect = "openai"
    default_base_url = "https://api.openai.com/v1"
    Options = OpenAIOptions

    def __init__(self, name, config, options: OpenAIOptions | None = None) -> None:
        super().__init__(name, config, options or OpenAIOptions())
        # Subclasses (the mock) bring options of their own, without this field.
        self.max_tokens_field = getattr(self.options, "max_tokens_field", "max_completion_tokens")
        base = (config.base_url or self.default_base_url).rstrip("/")
        self.base_url = base
        self.chat_url = base + "/chat/completions"
        self.embeddings_url = base + "/embeddings"
        self.completions_url = base + "/completions"
        self.responses_url = base + "/responses"
        self.native = frozenset(("openai", "completions", "responses") if getattr(self.options, "responses_api", True)
                                else ("openai", "completions"))
        self.headers = self.upstream_headers()

    def family(self, upstream_model: str) -> str:
        name = upstream_model.lower().rsplit("/", 1)[-1]
        for prefixes, family in MODEL_FAMILIES:
            if name.startswith(prefixes):
                return family
        host = (urlsplit(self.base_url).hostname or "").lower()
        for suffix, family in HOST_FAMILIES:
            if host == suffix or host.endswith("." + suffix):
                return family
        return "openai-compatible"

    def speaks(self, dialect: str) -> bool:
        return dialect in self.native

    def chat_request(self, call: Call, route: Route, body: dict | None) -> UpstreamRequest:
        if body is None:  # passthrough: change the client's body only where needed
            body = call.body
            changed = False
            if body.get("model") != route.upstream_model:
                body["model"] = route.upstream_model
                changed = True
            url = self.chat_url
            if call.dialect == "responses":
                url = self.responses_url
            elif call.dialect == "completions":
                url = self.completions_url
            if call.stream and not call.include_usage:  # (Responses streams always end with usage)
                # Always ask for usage (billing); the codec strips it for the client.
                body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
                changed = True
            return self._sent(call, body, url) if changed else UpstreamRequest(url, call.body_bytes(), self.headers)
        body = {**body, "model": route.upstream_model}
        if self.max_tokens_field == "max_tokens" and "max_completion_tokens" in body:
            body["max_tokens"] = body.pop("max_completion_tokens")
        if body.get("stream"):
            body["stream_options"] = {"include_usage": True}
        return UpstreamRequest(self.chat_url, orjson.dumps(body), self.headers)

    def stored_response_request(self, method: str, response_id: str, query: str) -> UpstreamRequest | None:
        if "responses" not in self.native:
            return None
        url = f"{self.responses_url}/{quote(response_id, safe='')}" + (f"?{query}" if query else "")
        return UpstreamRequest(url, b"", self.headers, method=method)

    def _sent(self, call: Call, body: dict, url: str) -> UpstreamRequest:
        call.set_body(body)
        return UpstreamRequest(url, call.body_bytes(), self.headers)

    def media_request(self, call: Call, route: Route, path: str) -> UpstreamRequest:
        upload = call.state.get(UPLOAD)
        if upload is None:  # JSON (images, speech)
            if call.body.get("model") != route.upstream_model:
                call.body["model"] = route.upstream_model
                call.set_body(call.body)
            return UpstreamRequest(self.base_url + path, call.body_bytes(), self.headers)
        body = call.raw_body
        if call.body.get("model") != route.upstream_model:
            body = upload.with_field(body, "model", route.upstream_model)
        return UpstreamRequest(self.base_url + path, body, {**self.headers, "Content-Type": upload.content_type})

    def embeddings_request(self, call: Call, route: Route) -> UpstreamRequest:
        if call.body.get("model") != route.upstream_model:
            call.body["model"] = route.upstream_model
            call.set_body(call.body)
        return UpstreamRequest(self.embeddings_url, call.body_bytes(), self.headers)

    def chat_response(self, call: Call, body: bytes) -> tuple[dict, Usage | None]:
        data = loads_json(body, self.name)
        return data, Usage.from_openai(data.get("usage"))

    def chat_stream(self, call: Call) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()


class OpenAIStreamDecoder:
    """OpenAI SSE -> canonical chunks (they are the same thing, parsed)."""

    __slots__ = ("usage", "done", "_reader", "_error")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.done = False
        self._reader = EventReader()
        self._error: ProxyError | None = None

    def feed(self, data: bytes) -> list[dict]:
        out = []
        for _, payload in self._reader.feed(data):
            if payload == b"[DONE]":
                self.done = True
                break
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                if b'"usage"' in payload:  # a usage report that cannot be read (NaN, cut JSON): unknown usage
                    self.usage = None
                continue
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk and "choices" not in chunk:
                err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                # Raised from finish(), so the chunks decoded before it in this read still go out.
                self._error = ProxyError(502, f"upstream error mid-stream: {err.get('message', 'unknown')}",
                                         code="upstream_stream_error")
                self.done = True
                break
            if isinstance(chunk.get("usage"), dict):  # the last report counts; one unusable: unknown usage
                self.usage = Usage.from_openai(chunk["usage"])
            if chunk.get("choices"):
                out.append(chunk)
        return out

    def finish(self) -> list[dict]:
        if self._error is not None:
            raise self._error
        if not self.done and self.usage is None:
            raise ProxyError(502, "upstream stream ended before it was complete", code="upstream_stream_cut")
        return []
