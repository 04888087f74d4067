"""The Anthropic Messages dialect: ``POST /v1/messages`` for Anthropic clients.

To an Anthropic upstream the request is a byte passthrough
(``AnthropicPassthrough`` sniffs the usage); to any other upstream it goes
through the canonical OpenAI form both ways (``anthropic_canonical`` for
bodies, ``AnthropicEncoder`` for streams). Errors reach the client in
Anthropic's shape (the core renders ``ProxyError`` per dialect).
"""

from __future__ import annotations

from proxy import Call, Dialect, Usage
from proxy.outputtext import sse_payloads

from .anthropic_canonical import completion_to_message, to_canonical
from .anthropic_response import usage_from_anthropic
from .anthropic_stream import AnthropicEncoder, AnthropicPassthrough
from .anthropic_validate import validate_messages


def _wants_thinking(call: Call) -> bool:
    thinking = call.body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


class AnthropicDialect(Dialect):
    name = "anthropic"

    def validate(self, body: dict) -> None:
        validate_messages(body)

    def canonical_request(self, call: Call) -> dict:
        return to_canonical(call.body)

    def response_usage(self, body: dict) -> Usage | None:
        return usage_from_anthropic(body.get("usage"))

    def passthrough(self, call: Call) -> AnthropicPassthrough:
        return AnthropicPassthrough(call.provider_name or "upstream")

    def encoder(self, call: Call) -> AnthropicEncoder:
        return AnthropicEncoder(with_thinking=_wants_thinking(call))

    def render_completion(self, call: Call, completion: dict) -> dict:
        return completion_to_message(completion, with_thinking=_wants_thinking(call))

    def streamed_text(self, blob: bytes) -> str:
        """Text, thinking and tool input of the content blocks (and tool names)."""
        out: list[str] = []
        for event in sse_payloads(blob):
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta") or {}
                for field in ("text", "thinking", "partial_json"):
                    value = delta.get(field) if isinstance(delta, dict) else None
                    if isinstance(value, str):
                        out.append(value)
            elif kind == "content_block_start":
                block = event.get("content_block") or {}
                if isinstance(block, dict) and isinstance(block.get("name"), str):
                    out.append(block["name"])
        return "".join(out)
