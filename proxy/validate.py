"""Checks of OpenAI request bodies: each mistake is a 400 naming the field.

Only what the gateway relies on, or what an upstream would reject after the
client had already been charged a round trip, is checked here. Unknown fields
pass through untouched (providers add parameters faster than gateways).
"""

from __future__ import annotations

from typing import Any

from .errors import bad_request

CHAT_ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_model(body: dict) -> None:
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required: the name of a model from GET /v1/models", "model", "missing_model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' must be a non-empty string", "model")


def check_int(body: dict, name: str, low: int, high: int | None = None) -> None:
    v = body.get(name)
    if v is None:
        return
    if not _is_int(v) or v < low or (high is not None and v > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"'{name}' must be an integer {bound}, got {v!r}", name)


def check_number(body: dict, name: str, low: float, high: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if not _is_number(v) or not (low <= v <= high):
        raise bad_request(f"'{name}' must be a number between {low:g} and {high:g}, got {v!r}", name)


def check_bool(body: dict, name: str) -> None:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise bad_request(f"'{name}' must be true or false, got {v!r}", name)


def validate_chat(body: dict) -> None:
    """A Chat Completions body."""
    check_model(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required: a list of {role, content} objects", "messages",
                          "missing_messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"'{where}' must be an object with 'role' and 'content'", where)
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise bad_request(f"'{where}.role' must be one of {', '.join(sorted(CHAT_ROLES))}, got {role!r}",
                              f"{where}.role")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(f"'{where}.content' must be a string or a list of content parts", f"{where}.content")
    check_bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad_request("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
        if "include_usage" in opts and not isinstance(opts["include_usage"], bool):
            raise bad_request("'stream_options.include_usage' must be true or false", "stream_options.include_usage")
    check_int(body, "max_tokens", 1)
    check_int(body, "max_completion_tokens", 1)
    check_int(body, "n", 1, 128)
    check_number(body, "temperature", 0, 2)
    check_number(body, "top_p", 0, 1)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("'tools' must be a list of tool definitions", "tools")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise bad_request("'stop' must be a string or a list of strings", "stop")


def validate_embeddings(body: dict) -> None:
    """An Embeddings body."""
    check_model(body)
    inp = body.get("input")
    if inp is None:
        raise bad_request("'input' is required: a string or a list of strings", "input", "missing_input")
    if isinstance(inp, str):
        if not inp:
            raise bad_request("'input' must not be empty", "input")
        return
    if not isinstance(inp, list) or not inp:
        raise bad_request("'input' must be a string or a non-empty list of strings", "input")
    for i, item in enumerate(inp):
        if not (isinstance(item, str) or _is_int(item) or (isinstance(item, list) and all(map(_is_int, item)))):
            raise bad_request(f"'input[{i}]' must be a string (or token ids)", f"input[{i}]")
    check_int(body, "dimensions", 1)
