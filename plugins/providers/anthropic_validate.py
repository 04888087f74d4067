"""Checks of Anthropic Messages request bodies (``POST /v1/messages``).

Each mistake is a 400 whose message starts with the field's path in
Anthropic's own notation (``messages.0.content``), rendered in Anthropic's
error shape by the routes. Unknown fields pass (Anthropic adds parameters
often); the translation refuses those it cannot honour.
"""

from __future__ import annotations

from typing import Any

from proxy import ProxyError
from proxy.validate import is_int, is_number, unusable_text

ROLES = ("user", "assistant")
TOOL_CHOICES = ("auto", "any", "tool", "none")


def _bad(path: str, why: str) -> ProxyError:
    return ProxyError(400, f"{path}: {why}", param=path, code="invalid_request")


def validate_messages(body: dict) -> None:
    model = body.get("model")
    if model is None:
        raise _bad("model", "Field required (the name of a model from GET /v1/models)")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model", "must be a non-empty string")
    if not model.isprintable():
        problem = unusable_text(model)
        if problem is not None:
            raise _bad("model", f"{problem}: send the name of a model from GET /v1/models")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad("max_tokens", "Field required (the most tokens the answer may have)")
    if not is_int(max_tokens) or max_tokens < 1:
        raise _bad("max_tokens", f"must be an integer of at least 1, got {max_tokens!r}")
    messages = body.get("messages")
    if messages is None:
        raise _bad("messages", "Field required (a list of {role, content} objects)")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "must be a non-empty list")
    for i, m in enumerate(messages):
        _message(m, f"messages.{i}")
    _system(body.get("system"))
    for name in ("stream",):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise _bad(name, "must be true or false")
    _range(body, "temperature", 0, 1)
    _range(body, "top_p", 0, 1)
    top_k = body.get("top_k")
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise _bad("top_k", f"must be a non-negative integer, got {top_k!r}")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise _bad("stop_sequences", "must be a list of strings")
    _tools(body.get("tools"), body.get("tool_choice"))
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("metadata", "must be an object like {\"user_id\": \"...\"}")
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
            raise _bad("thinking", "must be {\"type\": \"enabled\", \"budget_tokens\": N} or {\"type\": \"disabled\"}")
        budget = thinking.get("budget_tokens")
        if thinking["type"] == "enabled" and (not is_int(budget) or budget < 1024):
            raise _bad("thinking.budget_tokens", "must be an integer of at least 1024")


def _range(body: dict, name: str, low: float, high: float) -> None:
    v = body.get(name)
    if v is not None and (not is_number(v) or not low <= v <= high):
        raise _bad(name, f"must be a number between {low:g} and {high:g}, got {v!r}")


def _message(m: Any, path: str) -> None:
    if not isinstance(m, dict):
        raise _bad(path, "must be an object with 'role' and 'content'")
    if m.get("role") not in ROLES:
        raise _bad(f"{path}.role", f"must be 'user' or 'assistant', got {m.get('role')!r}")
    content = m.get("content")
    if content is None:
        raise _bad(f"{path}.content", "Field required")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"{path}.content", "must be a string or a list of content blocks")
    for j, block in enumerate(content):
        where = f"{path}.content.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(where, "must be a content block object with a 'type'")
        kind = block["type"]
        if kind == "text" and not isinstance(block.get("text"), str):
            raise _bad(f"{where}.text", "Field required (a string)")
        if kind == "tool_use" and (not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str)):
            raise _bad(where, "a tool_use block needs string 'id' and 'name'")
        if kind == "tool_use" and not isinstance(block.get("input", {}), dict):
            raise _bad(f"{where}.input", "must be an object")
        if kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise _bad(f"{where}.tool_use_id", "Field required (a string)")
            inner = block.get("content")
            if inner is not None and not isinstance(inner, str):
                if not isinstance(inner, list):
                    raise _bad(f"{where}.content", "must be a string or a list of content blocks")
                for k, part in enumerate(inner):
                    if not isinstance(part, dict) or not isinstance(part.get("type"), str) or (
                            part["type"] == "text" and not isinstance(part.get("text"), str)):
                        raise _bad(f"{where}.content.{k}", "must be a content block like {\"type\": \"text\", "
                                                           "\"text\": \"...\"}")
        if kind == "image" and not isinstance(block.get("source"), dict):
            raise _bad(f"{where}.source", "Field required (an object)")


def _system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _bad("system", "must be a string or a list of text blocks")
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(f"system.{j}", "must be a text block {\"type\": \"text\", \"text\": \"...\"}")


def _tools(tools: Any, choice: Any) -> None:
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "must be a list of tool definitions")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
                raise _bad(f"tools.{i}.name", "Field required (a string)")
            schema = tool.get("input_schema")
            if tool.get("type") in (None, "custom") and not isinstance(schema, dict):
                raise _bad(f"tools.{i}.input_schema", "Field required (a JSON schema object)")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
            raise _bad("tool_choice.type", f"must be one of {', '.join(TOOL_CHOICES)}")
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise _bad("tool_choice.name", "Field required when type is 'tool'")
