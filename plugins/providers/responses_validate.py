"""Checks of OpenAI Responses API bodies (``POST /v1/responses``): each mistake a 400
naming the field. Only what the gateway relies on (model, input, the output cap,
stream) and what every upstream would refuse is checked; other fields pass."""

from __future__ import annotations

from typing import Any

from proxy import bad_request
from proxy.validate import check_bool, check_int, check_model, check_number

ROLES = frozenset(("user", "assistant", "system", "developer"))


def validate_responses(body: dict) -> None:
    check_model(body)
    if body.get("conversation") is not None:
        # A conversation lives upstream under the operator's own account and is made through
        # /v1/conversations, which the gateway does not serve: no tenant made the id, so the
        # gateway cannot tell whose it is, and passing it on would let a caller read one it
        # does not own. previous_response_id is checked against its owner instead.
        raise bad_request("'conversation' is not served through this gateway: the Responses API keeps a conversation "
                          "upstream under the operator's account, so whose it is cannot be checked; continue with "
                          "'previous_response_id' (or send the turns in 'input')", "conversation",
                          "unsupported_parameter")
    inp = body.get("input")
    if inp is None:
        if not any(body.get(k) is not None for k in ("previous_response_id", "prompt")):
            raise bad_request("'input' is required: a string, or a list of input items such as "
                              "{\"role\": \"user\", \"content\": \"...\"}", "input", "missing_input")
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            _check_item(item, f"input[{i}]")
    elif not isinstance(inp, str):
        raise bad_request("'input' must be a string or a list of input items", "input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, (str, list)):
        raise bad_request("'instructions' must be a string", "instructions")
    for name in ("stream", "store", "background", "parallel_tool_calls"):
        check_bool(body, name)
    if body.get("background") is True:
        raise bad_request("'background': true is not served: a background response is answered later, out of the "
                          "gateway's sight, so it could not be billed for what it made; leave it out (and stream "
                          "a long answer)", "background", "background_not_supported")
    check_int(body, "max_output_tokens", 1)
    check_number(body, "temperature", 0, 2)
    check_number(body, "top_p", 0, 1)
    _check_tools(body.get("tools"))
    _check_text(body.get("text"))
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise bad_request("'reasoning' must be an object like {\"effort\": \"low\"}", "reasoning")
    for name in ("previous_response_id", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad_request(f"'{name}' must be a string", name)


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise bad_request(f"'{where}' must be an input item object (e.g. {{\"role\": \"user\", \"content\": "
                          "\"...\"}})", where)
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise bad_request(f"'{where}.type' must be a string", f"{where}.type")
    if kind == "message":
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                              f"{where}.role")
        content = item.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise bad_request(f"'{where}.content[{j}]' must be a content part object with a string 'type'",
                                      f"{where}.content[{j}]")
                if part["type"] in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                    raise bad_request(f"'{where}.content[{j}].text' must be a string", f"{where}.content[{j}].text")
        elif not isinstance(content, str):
            raise bad_request(f"'{where}.content' must be a string or a list of content parts", f"{where}.content")
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise bad_request(f"'{where}.{name}' must be a string", f"{where}.{name}")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise bad_request(f"'{where}.call_id' must be a string", f"{where}.call_id")
        if not isinstance(item.get("output"), (str, list)):
            raise bad_request(f"'{where}.output' must be a string", f"{where}.output")


def _check_text(text: Any) -> None:
    """``text.format``'s shape (a translating provider reads its ``schema``)."""
    if text is None:
        return
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(text, dict) or (fmt is not None and (not isinstance(fmt, dict)
                                                           or not isinstance(fmt.get("type"), str))):
        raise bad_request("'text' must be an object like {\"format\": {\"type\": \"json_object\"}}", "text")
    if fmt is not None and fmt["type"] == "json_schema" and not isinstance(fmt.get("schema", {}), dict):
        raise bad_request("'text.format.schema' must be a JSON schema object", "text.format.schema")


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list of tool definitions", "tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request(f"'tools[{i}]' must be a tool object with a string 'type' (e.g. \"function\")",
                              f"tools[{i}]")
        if tool["type"] == "function":
            if not isinstance(tool.get("name"), str):
                raise bad_request(f"'tools[{i}].name' must be a string (Responses function tools are flat: "
                                  "{\"type\": \"function\", \"name\", \"parameters\"})", f"tools[{i}].name")
            if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
                raise bad_request(f"'tools[{i}].parameters' must be a JSON schema object", f"tools[{i}].parameters")
