"""Responses API <-> the canonical (Chat Completions) form, for upstreams that do not
serve the Responses API (Anthropic, Gemini, the mock, ``responses_api: false``).

Request: ``instructions`` -> a system message; ``input`` (a string, or message,
``function_call`` and ``function_call_output`` items with text and image parts)
-> messages; flat function ``tools`` -> chat tools; ``tool_choice``;
``max_output_tokens`` -> ``max_completion_tokens``; ``reasoning.effort`` ->
``reasoning_effort``; ``text.format`` -> ``response_format``. What needs the
upstream's memory (``previous_response_id``, ``store: true``, ``background``,
``conversation``) and the hosted tools (web search, file search...) are refused
with a 400 naming the field.

Answer: a canonical ``chat.completion`` -> a ``response`` object (message and
``function_call`` output items; ``incomplete`` when the answer hit its length cap).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from proxy import Call, ProxyError, Usage

from .responses_stream import usage_to_responses

#: Request fields copied into the answer, as OpenAI echoes them.
ECHOED = ("instructions", "max_output_tokens", "parallel_tool_calls", "temperature", "top_p", "tool_choice",
          "tools", "text", "reasoning", "metadata", "user")


def refuse(param: str, why: str) -> ProxyError:
    return ProxyError(400, f"'{param}' {why}", param=param, code="unsupported_parameter")


def to_canonical(call: Call) -> dict:
    body = call.body
    provider = call.route.provider if call.route is not None else None
    where = f"provider '{provider.name}' ({provider.kind})" if provider is not None else "this provider"
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise refuse(name, f"needs the upstream's stored conversation, which only OpenAI's Responses API keeps; "
                               f"model {call.model!r} is served by {where}: send the whole conversation in 'input'")
    if body.get("store") is True:
        raise refuse("store", f"needs OpenAI's Responses API; model {call.model!r} is served by {where}, which stores "
                              "nothing: leave 'store' out or set it to false")
    out: dict[str, Any] = {"model": body.get("model"), "messages": canonical_messages(body)}
    if body.get("stream") is True:
        out["stream"] = True
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "top_logprobs"):
        if body.get(name) is not None:
            out[name] = body[name]
    tools = [_tool(t, f"tools[{i}]") for i, t in enumerate(body.get("tools") or ())]
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise refuse("tool_choice", "must be auto, none, required or {\"type\": \"function\", \"name\"} here")
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_schema":
            out["response_format"] = {"type": "json_schema", "json_schema": {
                k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}}
        elif kind == "json_object":
            out["response_format"] = {"type": "json_object"}
    return out


def canonical_messages(body: dict, origins: Origins | None = None) -> list[dict]:
    """The chat messages of a Responses body (``instructions`` and ``input``); with ``origins``,
    noted there: the Responses field each message (and each tool call) was made from."""
    messages: list[dict] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
        if origins is not None:
            origins.messages.append("instructions")
    inp = body.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
        if origins is not None:
            origins.messages.append("input")
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            where = f"input[{i}]"
            count = len(messages)
            _add_item(messages, item, where)
            if origins is not None:
                origins.note(messages, count, item, where)
    return messages


class Origins:
    """Where the canonical messages came from: ``messages[m]`` -> ``input[i]`` (or
    ``instructions``), and ``(m, k)`` (``messages[m].tool_calls[k]``) -> a function_call item."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.tool_calls: dict[tuple[int, int], str] = {}

    def note(self, messages: list[dict], count: int, item: dict, where: str) -> None:
        if len(messages) > count:
            self.messages.append(where)
        if item.get("type") == "function_call":
            self.tool_calls[(len(messages) - 1, len(messages[-1]["tool_calls"]) - 1)] = where


def _add_item(messages: list[dict], item: dict, where: str) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item["role"]
        content = item.get("content")
        if isinstance(content, list):
            parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
            parts = [p for p in parts if p is not None]
            if role in ("system", "developer", "assistant") and all(p["type"] == "text" for p in parts):
                content = "".join(p["text"] for p in parts)
            else:
                content = parts
        messages.append({"role": role, "content": content})
    elif kind == "function_call":
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    elif kind == "reasoning":
        return  # the upstream's own reasoning from an earlier turn: nothing to send elsewhere
    else:
        raise refuse(f"{where}.type", f"{kind!r} items need OpenAI's Responses API; send messages, function_call "
                                      "and function_call_output items to this model")


def _part(part: dict, where: str) -> dict | None:
    kind = part["type"]
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal") or ""}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise refuse(f"{where}.image_url", "must be a URL or a data URL here (file ids need OpenAI's Files API)")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise refuse(f"{where}.type", f"content parts of type {kind!r} are not translated for this model; "
                                  "send input_text or input_image")


def _tool(tool: dict, where: str) -> dict:
    if tool.get("type") != "function":
        raise refuse(f"{where}.type", f"{tool.get('type')!r} is one of OpenAI's hosted tools; this model's "
                                      "provider has only function tools")
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def skeleton(call: Call, response_id: str, model: str, created: int) -> dict:
    """The ``response`` object's fields, without output, status or usage."""
    body = call.body
    out = {"id": response_id, "object": "response", "created_at": created, "model": model, "error": None,
           "incomplete_details": None, "previous_response_id": None, "store": False,
           "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "metadata": {}}
    for name in ECHOED:
        if body.get(name) is not None:
            out[name] = body[name]
    return out


def status_of(finish_reason: str | None) -> tuple[str, dict | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def completion_to_response(call: Call, completion: dict, usage: Usage | None) -> dict:
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[dict] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(message_item(new_id("msg"), text))
    for tool_call in message.get("tool_calls") or ():
        fn = tool_call.get("function") or {}
        output.append(function_item(new_id("fc"), tool_call.get("id") or new_id("call"), fn.get("name") or "",
                                    fn.get("arguments") or "{}"))
    status, details = status_of(choice.get("finish_reason"))
    response = skeleton(call, new_id("resp"), completion.get("model") or call.model,
                        int(completion.get("created") or time.time()))
    response.update(status=status, incomplete_details=details, output=output,
                    usage=usage_to_responses(usage) if usage is not None else None)
    return response


def message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def function_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}
