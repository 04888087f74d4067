"""Anthropic client requests -> canonical (OpenAI) bodies, and canonical
completions -> Anthropic messages. Used when an Anthropic client reaches an
OpenAI-compatible or Gemini upstream.

Mapping choices (also in ``docs/providers.md``):

- ``system`` (string or text blocks) -> one system message, blocks joined by a blank line.
- ``tool_result`` blocks -> ``tool`` messages placed before the rest of their
  user message; ``is_error: true`` prefixes the result with ``Error: ``
  (OpenAI has no error flag on tool results).
- ``thinking: {budget_tokens}`` -> ``reasoning_effort`` (low < 4096 <= medium
  < 16384 <= high); thinking blocks sent back in history are dropped.
- ``top_k`` is carried as the non-standard ``top_k`` field (Gemini maps it;
  OpenAI proper rejects it, vLLM-style servers honour it).
- ``stop_sequence`` in answers is null: OpenAI does not say which stop matched.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy import ProxyError, Usage

from .translate import dumps_text, new_id

# OpenAI finish_reason -> Anthropic stop_reason
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}


def _refuse(path: str, why: str) -> ProxyError:
    return ProxyError(400, f"{path}: {why}", param=path, code="unsupported_parameter")


def to_canonical(body: dict) -> dict:
    """An Anthropic Messages body (validated) as an OpenAI chat body."""
    messages = canonical_messages(body)
    # OpenAI's current name: reasoning models (o-series, gpt-5) refuse max_tokens.
    out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_completion_tokens": body["max_tokens"]}
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    _tools(body, out)
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens") or 0
        out["reasoning_effort"] = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    if body.get("mcp_servers"):
        raise _refuse("mcp_servers", "MCP connectors run inside Anthropic's API; this model is not served by "
                      "Anthropic")
    return out


def canonical_messages(body: dict, origins: list[tuple[str, list[int]]] | None = None) -> list[dict]:
    """The chat messages of a Messages body; with ``origins``, noted there for each: the path it
    was made from (``system``, ``messages.1``, ``messages.1.content.0`` for a tool result) and the
    content block index of each of its parts or tool calls."""
    messages: list[dict] = []
    system = body.get("system")
    if isinstance(system, list):
        system = "\n\n".join(b["text"] for b in system if b.get("text"))
    if system:
        messages.append({"role": "system", "content": system})
        if origins is not None:
            origins.append(("system", []))
    for i, m in enumerate(body["messages"]):
        if m["role"] == "user":
            made = _user(m["content"], f"messages.{i}")
        else:
            made = [_assistant(m["content"], f"messages.{i}")]
        messages += made
        if origins is not None:
            origins += _origins(m, made, f"messages.{i}")
    return messages


def _origins(message: dict, made: list[dict], path: str) -> list[tuple[str, list[int]]]:
    content = message["content"]
    if isinstance(content, str):
        return [(path, [])]
    tools = [j for j, b in enumerate(content) if b["type"] == "tool_result"]
    if message["role"] == "assistant":
        return [(path, [j for j, b in enumerate(content) if b["type"] == "tool_use"])]
    out = [(f"{path}.content.{j}", []) for j in tools]
    if len(made) > len(tools):  # the user message of the other blocks
        out.append((path, [j for j, b in enumerate(content) if b["type"] in ("text", "image")]))
    return out


def _user(content: Any, path: str) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(content):
        kind = block["type"]
        where = f"{path}.content.{j}"
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block["source"], where)}})
        elif kind == "tool_result":
            tools.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                          "content": _tool_result_text(block, where)})
        else:
            raise _refuse(f"{where}.type", f"content blocks of type {kind!r} are only served by Anthropic "
                          "upstreams (text, image and tool_result are translated)")
    out = tools
    if parts:
        simple = all(p["type"] == "text" for p in parts)
        out = out + [{"role": "user", "content": "".join(p["text"] for p in parts) if simple else parts}]
    return out


def _image_url(source: dict, where: str) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if source.get("type") == "url":
        return source.get("url") or ""
    raise _refuse(f"{where}.source.type", "only base64 and url image sources are translated")


def _tool_result_text(block: dict, where: str) -> str:
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _refuse(f"{where}.content.{k}", "only text tool results are translated")
            texts.append(part.get("text") or "")
        content = "".join(texts)
    text = content if isinstance(content, str) else ""
    return "Error: " + text if block.get("is_error") else text


def _assistant(content: Any, path: str) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts = []
    calls = []
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": dumps_text(block.get("input") or {})}})
        elif kind not in ("thinking", "redacted_thinking"):  # those are Anthropic-only: dropped
            raise _refuse(f"{path}.content.{j}.type", f"content blocks of type {kind!r} are only served by "
                          "Anthropic upstreams (text and tool_use are translated)")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(body: dict, out: dict) -> None:
    tools = body.get("tools") or []
    converted = []
    for i, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom"):
            raise _refuse(f"tools.{i}.type", f"server tool {tool.get('type')!r} runs inside Anthropic's API; "
                          "this model is not served by Anthropic")
        fn = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        converted.append({"type": "function", "function": fn})
    if converted:
        out["tools"] = converted
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if converted:
        if kind == "any":
            out["tool_choice"] = "required"
        elif kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif kind in ("auto", "none"):
            out["tool_choice"] = kind
        if choice.get("disable_parallel_tool_use") and kind != "none":
            out["parallel_tool_calls"] = False


# -- answers ------------------------------------------------------------------------

def usage_to_anthropic(usage: Usage | None) -> dict:
    u = usage or Usage()
    return {"input_tokens": u.prompt_tokens - u.cached_tokens - u.cache_write_tokens,
            "cache_creation_input_tokens": u.cache_write_tokens,
            "cache_read_input_tokens": u.cached_tokens, "output_tokens": u.completion_tokens}


def message_id(upstream_id: Any) -> str:
    if isinstance(upstream_id, str) and upstream_id.startswith("msg_"):
        return upstream_id
    return new_id("msg_")


def completion_to_message(completion: dict, with_thinking: bool) -> dict:
    """A canonical chat.completion as an Anthropic message."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    if with_thinking and message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu_"), "name": fn.get("name"),
                        "input": _arguments(fn.get("arguments"))})
    return {"id": message_id(completion.get("id")), "type": "message", "role": "assistant",
            "model": completion.get("model") or "", "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
            "usage": usage_to_anthropic(Usage.from_openai(completion.get("usage")))}


def _arguments(arguments: Any) -> dict:
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        # The upstream produced arguments that are not JSON: keep them visible.
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_value": value}

