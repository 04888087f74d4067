"""Checks of OpenAI request bodies: each mistake is a 400 naming the field.

Only what the gateway relies on, or what an upstream would reject after the
client had already been charged a round trip, is checked here. Unknown fields
pass through untouched (providers add parameters faster than gateways).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

from .errors import bad_request

# For client dialects' own validators (tollway_dialects): the OpenAI checks and their pieces.
__all__ = ["MAX_JSON_DEPTH", "check_bool", "check_depth", "check_int", "check_model", "check_number", "is_int",
           "is_number", "unusable_text", "validate_chat", "validate_completions", "validate_embeddings"]

CHAT_ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))

#: How deep a request body's arrays and objects may nest. orjson reads 1024 levels but
#: writes at most 254, and a body the gateway changes (a mapped model name, a translated
#: request) is written again: 64 leaves room for the translators' own wrapping and is
#: far beyond any real request (a JSON schema in ``tools`` is rarely 10 deep).
MAX_JSON_DEPTH = 64


def check_depth(body: dict | list, raw: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """400 when ``body`` (parsed from ``raw``) nests deeper than ``limit``.

    A body with at most ``limit`` brackets cannot be deeper: two byte counts
    settle the usual request without looking at the parsed value."""
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return
    stack: list[tuple[Any, int]] = [(body, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        if depth > limit:
            raise bad_request(f"the request body nests arrays and objects {limit + 1} or more levels deep; the "
                              f"gateway's limit is {limit}", code="json_too_deep")
        for item in value.values() if type(value) is dict else value:
            if type(item) is dict or type(item) is list:
                push((item, depth + 1))


def is_int(v: Any) -> bool:
    """A JSON integer (``true`` is not one, though Python's bool is an int)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A JSON number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_model(body: dict) -> None:
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required: the name of a model from GET /v1/models", "model", "missing_model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' must be a non-empty string", "model")
    if not model.isprintable():
        problem = unusable_text(model)
        if problem is not None:
            raise bad_request(f"'model' {problem}: send the name of a model from GET /v1/models", "model")


def unusable_text(text: str) -> str | None:
    """What makes ``text`` (a name the gateway logs and stores: a model's) unusable, or None: a
    control character (C0 such as NUL, CR or LF, DEL, C1). Other characters that do not print (a
    no-break space) pass; a lone surrogate never gets this far (orjson refuses ``"\\ud800"``)."""
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc":
            return f"holds a control character (U+{ord(ch):04X}) at index {i}"
    return None


def check_int(body: dict, name: str, low: int, high: int | None = None) -> None:
    v = body.get(name)
    if v is None:
        return
    if not is_int(v) or v < low or (high is not None and v > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"'{name}' must be an integer {bound}, got {v!r}", name)


def check_number(body: dict, name: str, low: float, high: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if not is_number(v) or not (low <= v <= high):
        raise bad_request(f"'{name}' must be a number between {low:g} and {high:g}, got {v!r}", name)


def check_bool(body: dict, name: str) -> None:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise bad_request(f"'{name}' must be true or false, got {v!r}", name)


def validate_chat(body: dict) -> None:
    """A Chat Completions body."""
    model = body.get("model")
    if type(model) is not str or not model.isprintable() or not model.strip():
        check_model(body)  # (a printable name passes it: its call only for the others)
    messages = body.get("messages")
    if type(messages) is list and messages:
        # The usual message, {role, content} with a known role and a text, has nothing else to check:
        # anything else (or an unhashable role: the TypeError) is checked by the general loop.
        try:
            for m in messages:
                if type(m) is not dict or len(m) != 2 or type(m.get("content")) is not str \
                        or m.get("role") not in CHAT_ROLES:
                    _check_messages(messages)
                    break
        except TypeError:
            _check_messages(messages)
    else:
        _check_messages(messages)
    # Most bodies have few of these: the body's own fields are looked at (a handful), not the table's
    # nine. A refusal is made again in the table's order, so the same field is named as always.
    for name in body:
        check = _CHAT_OPTIONAL.get(name)
        if check is not None:
            # (the usual values of the usual two, inline: a call less each)
            if check is _check_flag:
                value = body[name]
                if value is True or value is False:
                    continue
            elif check is _check_positive_int:
                value = body[name]
                if type(value) is int and value >= 1:
                    continue
            try:
                check(body, name)
            except Exception:  # (whatever the first check in the table's order raises, as before)
                _check_optional_in_order(body)
                raise


def _check_messages(messages: Any) -> None:
    """``messages``, each message whole (``validate_chat``'s loop for what is not the usual message)."""
    if messages is None:
        raise bad_request("'messages' is required: a list of {role, content} objects", "messages",
                          "missing_messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    for i, m in enumerate(messages):  # (where: formatted only for what needs it, not for every message)
        if not isinstance(m, dict):
            where = f"messages[{i}]"
            raise bad_request(f"'{where}' must be an object with 'role' and 'content'", where)
        role = m.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            where = f"messages[{i}]"
            raise bad_request(f"'{where}.role' must be one of {', '.join(sorted(CHAT_ROLES))}, got {role!r}",
                              f"{where}.role")
        content = m.get("content")
        if content is not None and type(content) is not str:
            _check_parts(content, f"messages[{i}].content")
        if "tool_calls" in m or "tool_call_id" in m or "name" in m:
            _check_message_extras(m, f"messages[{i}]")


def _check_optional_in_order(body: dict) -> None:
    for name, check in _CHAT_OPTIONAL.items():
        if name in body:
            check(body, name)


def _check_parts(content: Any, where: str) -> None:
    """A list of content parts: objects with a string ``type``; a text part's ``text``
    is a string, an image's ``image_url`` a URL string or ``{"url": ...}``."""
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or a list of content parts", where)
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"'{where}[{j}]' must be a content part object with a string 'type'", f"{where}[{j}]")
        kind = part["type"]
        if kind == "text" and not isinstance(part.get("text"), str):
            raise bad_request(f"'{where}[{j}].text' must be a string", f"{where}[{j}].text")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise bad_request(f"'{where}[{j}].image_url' must be {{\"url\": \"...\"}}", f"{where}[{j}].image_url")


def _check_message_extras(m: dict, where: str) -> None:
    calls = m.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise bad_request(f"'{where}.tool_calls' must be a list", f"{where}.tool_calls")
        for k, call in enumerate(calls):
            here = f"{where}.tool_calls[{k}]"
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
                raise bad_request(f"'{here}' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                                  f"\"arguments\"}}}} with string id and name", here)
            if not isinstance(fn.get("arguments", ""), str):
                raise bad_request(f"'{here}.function.arguments' must be a string (JSON text)",
                                  f"{here}.function.arguments")
    for name in ("tool_call_id", "name"):
        if m.get(name) is not None and not isinstance(m[name], str):
            raise bad_request(f"'{where}.{name}' must be a string", f"{where}.{name}")


def _check_tools(body: dict, name: str) -> None:
    tools = body[name]
    if tools is None:
        return
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list of tool definitions", "tools")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or (tool.get("type", "function") == "function" and (
                not isinstance(fn, dict) or not isinstance(fn.get("name"), str))):
            raise bad_request(f"'tools[{i}]' must be {{\"type\": \"function\", \"function\": {{\"name\", "
                              f"\"parameters\"}}}}", f"tools[{i}]")
        if isinstance(fn, dict) and fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise bad_request(f"'tools[{i}].function.parameters' must be a JSON schema object",
                              f"tools[{i}].function.parameters")


def _check_stream_options(body: dict, name: str) -> None:
    opts = body[name]
    if opts is None:
        return
    if not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    if "include_usage" in opts and not isinstance(opts["include_usage"], bool):
        raise bad_request("'stream_options.include_usage' must be true or false", "stream_options.include_usage")


def _check_stop(body: dict, name: str) -> None:
    stop = body[name]
    if stop is not None and not isinstance(stop, str) and (
            not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise bad_request("'stop' must be a string or a list of strings", "stop")


def _check_response_format(body: dict, name: str) -> None:
    """The shape a translating provider reads (``json_schema.schema`` becomes a tool's input
    schema on Anthropic, a response schema on Gemini); the schema itself is the upstream's."""
    fmt = body[name]
    if fmt is None:
        return
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise bad_request("'response_format' must be an object like {\"type\": \"json_object\"}", "response_format")
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise bad_request("'response_format.json_schema' must be an object like {\"name\": \"...\", "
                              "\"schema\": {...}}", "response_format.json_schema")
        if spec.get("schema") is not None and not isinstance(spec["schema"], dict):
            raise bad_request("'response_format.json_schema.schema' must be a JSON schema object",
                              "response_format.json_schema.schema")


def _check_positive_int(body: dict, name: str) -> None:
    """``check_int(body, name, 1)``: a positive integer (or null) passes without its call."""
    v = body[name]
    if type(v) is not int or v < 1:
        check_int(body, name, 1)


def _check_flag(body: dict, name: str) -> None:
    """``check_bool(body, name)``: true or false passes without its call."""
    if body[name] is not True and body[name] is not False:
        check_bool(body, name)


# Optional Chat Completions fields the gateway checks, in the order errors are reported.
_CHAT_OPTIONAL: dict[str, Callable[[dict, str], None]] = {
    "stream": _check_flag,
    "stream_options": _check_stream_options,
    "max_tokens": _check_positive_int,
    "max_completion_tokens": _check_positive_int,
    "n": lambda body, name: check_int(body, name, 1, 128),
    "temperature": lambda body, name: check_number(body, name, 0, 2),
    "top_p": lambda body, name: check_number(body, name, 0, 1),
    "tools": _check_tools,
    "stop": _check_stop,
    "response_format": _check_response_format,
}


def validate_embeddings(body: dict) -> None:
    """An Embeddings body."""
    check_model(body)
    inp = body.get("input")
    if inp is None:
        raise bad_request("'input' is required: a string or a list of strings", "input", "missing_input")
    if isinstance(inp, str):
        if not inp:
            raise bad_request("'input' must not be empty", "input")
    else:
        if not isinstance(inp, list) or not inp:
            raise bad_request("'input' must be a string or a non-empty list of strings", "input")
        for i, item in enumerate(inp):
            if not (isinstance(item, str) or is_int(item) or (isinstance(item, list) and all(map(is_int, item)))):
                raise bad_request(f"'input[{i}]' must be a string (or token ids)", f"input[{i}]")
    check_int(body, "dimensions", 1)


def validate_completions(body: dict) -> None:
    """A legacy Completions body (``prompt``, optional ``suffix``)."""
    check_model(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required: a string or a list of strings", "prompt", "missing_prompt")
    if not isinstance(prompt, str):
        if not isinstance(prompt, list) or not prompt:
            raise bad_request("'prompt' must be a string or a non-empty list of strings (or token ids)", "prompt")
        for i, item in enumerate(prompt):
            if not (isinstance(item, str) or is_int(item) or (isinstance(item, list) and all(map(is_int, item)))):
                raise bad_request(f"'prompt[{i}]' must be a string (or token ids)", f"prompt[{i}]")
    if body.get("suffix") is not None and not isinstance(body["suffix"], str):
        raise bad_request("'suffix' must be a string (the text after the completion, for fill-in-the-middle)",
                          "suffix")
    check_bool(body, "echo")
    check_int(body, "max_tokens", 0)
    check_int(body, "logprobs", 0, 5)
    for name in ("stream", "stream_options", "n", "temperature", "top_p", "stop"):
        if name in body:
            _CHAT_OPTIONAL[name](body, name)
