"""A Messages API request's errors in the Messages API's own terms.

A request to a model whose upstream is not Anthropic is translated to the canonical
(Chat Completions) form, and what refuses it then (the Gemini translation, a schema
check) names chat fields: ``tools[1].function.parameters.properties``,
``messages[3].tool_call_id``. The client sent ``tools.1.input_schema.properties`` and
``messages.2.content.0.tool_use_id`` (Anthropic's paths: dotted, indices as segments).
``in_anthropic_terms`` renames them; the index map is made again from the body, only
when an error needs it (``anthropic_canonical.canonical_messages``).
"""

from __future__ import annotations

import re

from proxy import Call, ProxyError

from .anthropic_canonical import canonical_messages
from .translate import in_client_terms

#: Canonical (chat) request fields -> the Messages fields they were made from.
FIELDS = {"max_completion_tokens": "max_tokens", "reasoning_effort": "thinking.budget_tokens",
          "stop": "stop_sequences", "user": "metadata.user_id"}
WORDS = {"max_completion_tokens": "max_tokens", "reasoning_effort": "thinking"}
_MESSAGE = re.compile(r"messages\[(\d+)\](.*)", re.S)
_TOOL = re.compile(r"tools\[(\d+)\](?:\.function)?(.*)", re.S)
_INDEXED = re.compile(r"(?:\.content|\.tool_calls)\[(\d+)\](.*)", re.S)
_INDEX = re.compile(r"\[(\d+)\]")
# Inside a block: chat's names -> Anthropic's.
_BLOCK_FIELDS = {".function.arguments": ".input", ".function.name": ".name", ".image_url.url": ".source",
                 ".image_url": ".source", ".tool_call_id": ".tool_use_id"}


def in_anthropic_terms(call: Call, err: ProxyError) -> ProxyError:
    """``err`` naming the Messages fields the client sent."""
    return in_client_terms(err, lambda param: _path(call.body, param), WORDS)


def _dotted(rest: str) -> str:
    """``.properties.a.anyOf[1]`` -> ``.properties.a.anyOf.1``."""
    return _INDEX.sub(r".\1", rest)


def _path(body: dict, param: str) -> str:
    if param in FIELDS:
        return FIELDS[param]
    tool = _TOOL.fullmatch(param)
    if tool is not None:
        rest = tool.group(2)
        if rest.startswith(".parameters"):
            rest = ".input_schema" + rest[len(".parameters"):]
        return f"tools.{tool.group(1)}{_dotted(rest)}"
    message = _MESSAGE.fullmatch(param)
    if message is None or not isinstance(body.get("messages"), list):
        return param
    origins: list[tuple[str, list[int]]] = []
    canonical_messages(body, origins)
    m, rest = int(message.group(1)), message.group(2)
    if m >= len(origins):
        return param
    where, blocks = origins[m]
    if where == "system":
        return "system"
    if ".content." in where:  # a tool result block: its tool_use_id and content
        return where + _BLOCK_FIELDS.get(rest, _dotted(rest) if rest.startswith(".content") else "")
    indexed = _INDEXED.fullmatch(rest)
    if indexed is None:
        return where + _dotted(rest)
    k, inner = int(indexed.group(1)), indexed.group(2)
    block = f"{where}.content.{blocks[k]}" if k < len(blocks) else f"{where}.content"
    return block + _BLOCK_FIELDS.get(inner, _dotted(inner))
