"""The Anthropic Messages dialect: ``POST /v1/messages`` for Anthropic clients.

To an Anthropic upstream the request is a byte passthrough
(``AnthropicPassthrough`` sniffs the usage); to any other upstream it goes
through the canonical OpenAI form both ways (``anthropic_canonical`` for
bodies, ``AnthropicEncoder`` for streams). Errors reach the client in
Anthropic's shape (the core renders ``ProxyError`` per dialect), naming the
Messages fields the client sent (``anthropic_errors``).
"""

from __future__ import annotations

import orjson

from proxy import Call, Dialect, ProxyError, Usage
from proxy.outputtext import prompt_text, sse_payloads

from ..accounts.estimate import IMAGE_TOKENS
from ..accounts.tokens import count_tokens
from .anthropic_canonical import completion_to_message, to_canonical, usage_to_anthropic
from .anthropic_errors import in_anthropic_terms
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

    def client_error(self, call: Call, err: ProxyError) -> ProxyError:
        return in_anthropic_terms(call, err)

    def usage_object(self, usage: Usage) -> dict:
        return usage_to_anthropic(usage)

    def passthrough(self, call: Call) -> AnthropicPassthrough:
        return AnthropicPassthrough(call.provider_name or "upstream")

    def encoder(self, call: Call) -> AnthropicEncoder:
        return AnthropicEncoder(with_thinking=_wants_thinking(call))

    def render_completion(self, call: Call, completion: dict) -> dict:
        return completion_to_message(completion, with_thinking=_wants_thinking(call))

    async def estimate_input_tokens(self, call: Call) -> int:
        """cl100k tokens of the prompt's text (system, messages, tools), plus a few per
        message for the framing, as Anthropic's own count adds; images at their bound."""
        body = call.body
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        contents = [m.get("content") for m in messages if isinstance(m, dict)]  # the role is in the framing
        text = prompt_text({"system": body.get("system"), "messages": contents, "tools": body.get("tools")})
        images = sum(1 for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
                     for part in m["content"] if isinstance(part, dict) and part.get("type") in ("image", "document"))
        return await count_tokens(text) + 4 * len(messages) + IMAGE_TOKENS * images

    def answer_text(self, body: dict) -> str:
        """Text, thinking, tool names and tool input of a whole message's content blocks."""
        out: list[str] = []
        content = body.get("content")
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            for field in ("text", "thinking", "name"):
                if isinstance(block.get(field), str):
                    out.append(block[field])
            if block.get("input") is not None:
                out.append(orjson.dumps(block["input"]).decode())
        return "".join(out)

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
