"""Anthropic Messages upstreams (``kind: anthropic``).

Anthropic clients (``POST /v1/messages``) get a byte passthrough: the body goes
up with the model name swapped, the stream comes back as sent (usage sniffed
by the Anthropic dialect). OpenAI clients are translated both ways
(``anthropic_request`` / ``anthropic_response``).

Config (flat keys of ``providers.<name>``)::

    anthropic:
      kind: anthropic
      base_url: https://api.anthropic.com     # /v1/messages is appended
      api_key: ${ANTHROPIC_API_KEY}           # sent as x-api-key
      anthropic_version: "2023-06-01"         # sent as anthropic-version
      default_max_tokens: 4096                # when an OpenAI client sent none
      clamp_temperature: false                # true: temperature > 1 becomes 1 instead of a 400
      beta: []                                # anthropic-beta flags, if any

Errors use the shared mapping (``proxy.provider.upstream_error``), which reads
Anthropic's ``{"type":"error","error":{"type","message"}}`` shape: 529
overloaded -> 503, 429 keeps ``retry-after``, 400 passes the provider's
message, 401/403 -> 502 without details.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from proxy import Call, Provider, Route, StateKey, UpstreamRequest, Usage
from proxy.provider import PROMPT_CACHE, loads_json

from .anthropic_request import mark_cacheable, to_anthropic
from .anthropic_response import AnthropicStreamDecoder, message_to_completion, usage_from_anthropic

# The tool whose input is the answer text (a translated response_format), for the answer's way back.
JSON_TOOL: StateKey[str | None] = StateKey("anthropic.json_tool")


@dataclass(frozen=True)
class AnthropicOptions:
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = 4096
    clamp_temperature: bool = False
    beta: list[str] = field(default_factory=list)


class AnthropicProvider(Provider):
    kind = "anthropic"
    dialect = "anthropic"
    default_base_url = "https://api.anthropic.com"
    Options = AnthropicOptions
    api_key_header = ("x-api-key", "")

    def __init__(self, name, config, options: AnthropicOptions | None = None) -> None:
        super().__init__(name, config, options or AnthropicOptions())
        base = (config.base_url or self.default_base_url).rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        self.url = base + "/v1/messages"
        extra = {"Accept": "application/json, text/event-stream", "anthropic-version": self.options.anthropic_version}
        if self.options.beta:
            extra["anthropic-beta"] = ",".join(self.options.beta)
        self.headers = self.upstream_headers(extra)

    def chat_request(self, call: Call, route: Route, body: dict | None) -> UpstreamRequest:
        prompt_cache = call.state.get(PROMPT_CACHE) is True
        if body is None:  # an Anthropic client: its body goes up as sent
            if call.body.get("model") != route.upstream_model or prompt_cache:
                call.body["model"] = route.upstream_model
                if prompt_cache:
                    mark_cacheable(call.body)
                call.set_body(call.body)
            return UpstreamRequest(self.url, call.body_bytes(), self._headers_for(call))
        options = self.options
        translation = to_anthropic(body, route.upstream_model, default_max_tokens=options.default_max_tokens,
                                   clamp_temperature=options.clamp_temperature,
                                   prompt_cache=prompt_cache or body.get("cache") is True)
        call.state[JSON_TOOL] = translation.json_tool
        return UpstreamRequest(self.url, orjson.dumps(translation.body), self.headers)

    def count_tokens_request(self, call: Call, route: Route) -> UpstreamRequest:
        """Anthropic counts it itself (``/v1/messages/count_tokens``), for free."""
        body = call.body
        if body.get("model") != route.upstream_model:
            body["model"] = route.upstream_model
            call.set_body(body)
        return UpstreamRequest(self.url + "/count_tokens", call.body_bytes(), self._headers_for(call))

    def _headers_for(self, call: Call) -> dict[str, str]:
        # A native client may ask for beta features itself; its flags go along.
        beta = call.request.headers.get("anthropic-beta") if call.request is not None else None
        if not beta:
            return self.headers
        mine = self.headers.get("anthropic-beta")
        return {**self.headers, "anthropic-beta": f"{mine},{beta}" if mine else beta}

    def chat_response(self, call: Call, body: bytes) -> tuple[dict, Usage | None]:
        msg = loads_json(body, self.name)
        completion = message_to_completion(msg, call.state.get(JSON_TOOL))
        # From Anthropic's own counts: the OpenAI form has no place for cache writes.
        return completion, usage_from_anthropic(msg.get("usage"))

    def chat_stream(self, call: Call) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder(self.name, call.state.get(JSON_TOOL))
