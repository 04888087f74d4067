"""Canonical (OpenAI Chat Completions) request -> Anthropic Messages request.

Anthropic's rules that shape this: only ``user``/``assistant`` roles, the
system prompt is a top-level field, consecutive same-role messages are merged,
every tool result answering one assistant turn sits in ONE user message with
the ``tool_result`` blocks first, empty text blocks are refused, and
``max_tokens`` is required.

JSON output (``response_format``) has no native switch in the Messages API:
it is mapped to a forced tool whose input schema is the requested schema, and
the answer's tool input becomes the message text (see ``JSON_TOOL``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .translate import (
    check_common_refusals,
    invalid,
    max_tokens_of,
    parse_arguments,
    parse_data_url,
    reasoning_budget,
    refuse,
    stop_list,
    tool_choice_name,
)

PROVIDER = "Anthropic"
#: The forced tool that carries JSON output; its input is returned as text.
JSON_TOOL = "json_response"


@dataclass(frozen=True)
class Translation:
    body: dict
    json_tool: str | None  # the tool whose input is the answer text (response_format)


def to_anthropic(body: dict, model: str, *, default_max_tokens: int, clamp_temperature: bool,
                 prompt_cache: bool = False) -> Translation:
    check_common_refusals(body, PROVIDER)
    system, messages = _messages(body.get("messages") or [])
    out: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        out["system"] = system
    max_tokens = max_tokens_of(body)
    out["max_tokens"] = max_tokens if max_tokens is not None else default_max_tokens
    _sampling(body, out, clamp_temperature)
    json_tool = _tools(body, out)
    _thinking(body, out, client_max=max_tokens is not None)
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if body.get("stream"):
        out["stream"] = True
    if prompt_cache:
        mark_cacheable(out)
    return Translation(out, json_tool)


def mark_cacheable(body: dict) -> None:
    """Ask Anthropic to cache the prompt's stable prefix: ``cache_control`` on the system prompt's
    last block, and on the last block before the newest message (the conversation so far).

    Anthropic caches everything up to a marked block (tools, then system, then messages), so two
    breakpoints cover a repeated system prompt and a growing conversation; it allows four.
    """
    ephemeral = {"type": "ephemeral"}
    system = body.get("system")
    if isinstance(system, str) and system:
        body["system"] = [{"type": "text", "text": system, "cache_control": ephemeral}]
    elif isinstance(system, list) and system and isinstance(system[-1], dict):
        system[-1]["cache_control"] = ephemeral
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) >= 2 and isinstance(messages[-2], dict):
        prefix = messages[-2]
        content = prefix.get("content")
        if isinstance(content, str) and content:
            prefix["content"] = [{"type": "text", "text": content, "cache_control": ephemeral}]
        elif isinstance(content, list) and content and isinstance(content[-1], dict):
            content[-1]["cache_control"] = ephemeral


# -- messages -----------------------------------------------------------------------

def _messages(messages: list) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    out: list[dict] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            system += [b for b in _text_blocks(m.get("content"), where) if b["text"]]
            continue
        if role == "user":
            blocks = _user_blocks(m.get("content"), where)
        elif role == "assistant":
            blocks = _assistant_blocks(m, where)
        elif role == "tool":
            blocks = [_tool_result(m, where)]
        else:
            raise refuse(f"{where}.role", f"role {role!r} has no equivalent", PROVIDER)
        if not blocks:
            continue  # e.g. an empty user message: Anthropic refuses empty text
        api_role = "assistant" if role == "assistant" else "user"
        if out and out[-1]["role"] == api_role:
            prev = out[-1]["content"]
            if role == "tool":
                # Tool results go before any other block of the merged user message.
                n = sum(1 for b in prev if b.get("type") == "tool_result")
                prev[n:n] = blocks
            else:
                prev.extend(blocks)
        else:
            out.append({"role": api_role, "content": blocks})
    return system, out


def _text_blocks(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in enumerate(content or []):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise invalid(f"{where}.content[{j}]", "must be a text part here")
        blocks.append({"type": "text", "text": part.get("text") or ""})
    return blocks


def _user_blocks(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content or []):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part, f"{where}.content[{j}]"))
        else:
            raise refuse(f"{where}.content[{j}].type", f"content parts of type {kind!r} are not translated "
                         "(text and image_url are)", PROVIDER)
    return blocks


def _image(part: dict, where: str) -> dict:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise invalid(f"{where}.image_url.url", "must be an http(s) or data: URL")
    data = parse_data_url(url)
    if data is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": data[0], "data": data[1]}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid(f"{where}.image_url.url", "must be an http(s) URL or a base64 data: URL")


def _assistant_blocks(m: dict, where: str) -> list[dict]:
    content = m.get("content")
    blocks = [b for b in _text_blocks(content, where) if b["text"]] if content else []
    for k, call in enumerate(m.get("tool_calls") or []):
        fn = call.get("function") or {}
        param = f"{where}.tool_calls[{k}]"
        if not call.get("id") or not fn.get("name"):
            raise invalid(param, "needs 'id' and 'function.name'")
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"],
                       "input": parse_arguments(fn.get("arguments"), f"{param}.function.arguments")})
    return blocks


def _tool_result(m: dict, where: str) -> dict:
    if not m.get("tool_call_id"):
        raise invalid(f"{where}.tool_call_id", "is required on tool messages")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m["tool_call_id"]}
    content = m.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content:
        texts = [b for b in _text_blocks(content, where) if b["text"]]
        if texts:
            block["content"] = texts
    return block


# -- parameters ---------------------------------------------------------------------

def _sampling(body: dict, out: dict, clamp_temperature: bool) -> None:
    temperature = body.get("temperature")
    if temperature is not None:
        if temperature > 1:
            if not clamp_temperature:
                raise refuse("temperature", f"Anthropic accepts 0 to 1, got {temperature}; send at most 1 "
                             "(or set the provider option clamp_temperature)", PROVIDER)
            temperature = 1
        out["temperature"] = temperature
    for name in ("top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    stops = stop_list(body.get("stop"))
    if stops:
        out["stop_sequences"] = stops


def _tools(body: dict, out: dict) -> str | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    named = tool_choice_name(choice)
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt_type in ("json_object", "json_schema"):
        if tools:
            raise refuse("response_format", "JSON output is carried by a forced tool on Anthropic, so it "
                         "cannot be combined with 'tools'", PROVIDER)
        schema: Any = {"type": "object"}
        description = "Respond with a JSON object."
        if fmt_type == "json_schema":
            spec = fmt.get("json_schema") or {}
            schema = spec.get("schema") or {"type": "object"}
            description = spec.get("description") or "Respond with JSON matching this schema."
        out["tools"] = [{"name": JSON_TOOL, "description": description, "input_schema": schema}]
        out["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
        return JSON_TOOL
    if fmt_type not in (None, "text"):
        raise invalid("response_format.type", "must be text, json_object or json_schema")
    if tools:
        out["tools"] = []
        for t in tools:
            fn = t["function"]
            tool = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object"}}
            if fn.get("description"):
                tool["description"] = fn["description"]
            out["tools"].append(tool)
    tc: dict[str, Any] | None = None
    if named is not None:
        tc = {"type": "tool", "name": named}
    elif choice == "required":
        tc = {"type": "any"}
    elif choice == "none":
        tc = {"type": "none"}
    elif choice == "auto":
        tc = {"type": "auto"}
    if body.get("parallel_tool_calls") is False and tools and (tc is None or tc["type"] != "none"):
        tc = {**(tc or {"type": "auto"}), "disable_parallel_tool_use": True}
    if tc is not None and tools:
        out["tool_choice"] = tc
    return None


def _thinking(body: dict, out: dict, client_max: bool) -> None:
    budget = reasoning_budget(body.get("reasoning_effort"))
    if not budget:
        return
    if not client_max:
        # The configured default bounds the answer; thinking comes on top.
        out["max_tokens"] += budget
    # Anthropic's max_tokens includes the thinking budget, as OpenAI's
    # max_completion_tokens includes reasoning tokens; the budget must be below it.
    budget = min(budget, out["max_tokens"] - 1)
    if budget < 1024:
        raise refuse("reasoning_effort", "Anthropic's smallest thinking budget is 1024 tokens; raise "
                     "max_completion_tokens above 1024", PROVIDER)
    if "temperature" in out and out["temperature"] != 1:
        raise refuse("temperature", "Anthropic does not accept a temperature with extended thinking "
                     "(reasoning_effort)", PROVIDER)
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
