"""Canonical (OpenAI Chat Completions) request -> Gemini generateContent body.

- Roles: assistant -> ``model``; user and tool results -> ``user``;
  system/developer -> ``systemInstruction``; consecutive same-role contents merge
  (so all results of one assistant turn answer it in one content).
- A tool message carries only ``tool_call_id``; Gemini wants the function
  *name*: it is looked up from the earlier assistant message's tool calls.
- Gemini 2.5+/3 models sign their function calls (``thoughtSignature``) and
  want the signature back with the call. The gateway keeps it in the tool
  call id it gives the client (``call_<hex>__thought__<signature>``), which
  clients send back unchanged, and restores it here.
"""

from __future__ import annotations

import mimetypes
from typing import Any

import orjson

from .gemini_schema import clean_schema
from .translate import (
    check_common_refusals,
    invalid,
    max_tokens_of,
    parse_arguments,
    parse_data_url,
    reasoning_budget,
    refuse,
    stop_list,
    text_of,
    tool_choice_name,
)

PROVIDER = "Gemini"
SIGNATURE_SEP = "__thought__"


def split_call_id(call_id: str) -> tuple[str, str | None]:
    base, sep, signature = call_id.partition(SIGNATURE_SEP)
    return base, (signature or None) if sep else None


def to_gemini(body: dict) -> dict:
    check_common_refusals(body, PROVIDER)
    system, contents = _contents(body.get("messages") or [])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    tools = body.get("tools")
    if tools:
        declarations = [_declaration(t["function"], f"tools[{i}].function") for i, t in enumerate(tools)]
        out["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config:
            out["toolConfig"] = tool_config
    elif body.get("tool_choice") not in (None, "auto", "none"):
        raise invalid("tool_choice", "needs 'tools'")
    return out


# -- contents -----------------------------------------------------------------------

def _contents(messages: list) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    contents: list[dict] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for i, m in enumerate(messages):
        role = m.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            text = text_of(m.get("content"))
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            parts = _user_parts(m.get("content"), where)
        elif role == "assistant":
            parts = _model_parts(m, where, names)
        elif role == "tool":
            parts = [_function_response(m, where, names)]
        else:
            raise refuse(f"{where}.role", f"role {role!r} has no equivalent", PROVIDER)
        if not parts:
            continue
        api_role = "model" if role == "assistant" else "user"
        if contents and contents[-1]["role"] == api_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": api_role, "parts": parts})
    return system, contents


def _user_parts(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for j, part in enumerate(content or []):
        kind = part.get("type") if isinstance(part, dict) else None
        here = f"{where}.content[{j}]"
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_media(url, f"{here}.image_url.url", "image/jpeg"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            fmt = audio.get("format") or "wav"
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": audio.get("data") or ""}})
        elif kind == "file":
            file = part.get("file") or {}
            data = parse_data_url(file.get("file_data") or "")
            if data is None:
                raise refuse(f"{here}.file", "only inline file_data (a base64 data: URL) is translated", PROVIDER)
            parts.append({"inlineData": {"mimeType": data[0], "data": data[1]}})
        else:
            raise refuse(f"{here}.type", f"content parts of type {kind!r} are not translated", PROVIDER)
    return parts


def _media(url: Any, where: str, default_mime: str) -> dict:
    if not isinstance(url, str) or not url:
        raise invalid(where, "must be an http(s) or data: URL")
    data = parse_data_url(url)
    if data is not None:
        return {"inlineData": {"mimeType": data[0], "data": data[1]}}
    if not url.startswith(("http://", "https://", "gs://")):
        raise invalid(where, "must be an http(s) URL or a base64 data: URL")
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or default_mime
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _model_parts(m: dict, where: str, names: dict[str, str]) -> list[dict]:
    parts: list[dict] = []
    text = text_of(m.get("content"))
    if text:
        parts.append({"text": text})
    for k, call in enumerate(m.get("tool_calls") or []):
        fn = call.get("function") or {}
        param = f"{where}.tool_calls[{k}]"
        if not call.get("id") or not fn.get("name"):
            raise invalid(param, "needs 'id' and 'function.name'")
        names[call["id"]] = fn["name"]
        part: dict[str, Any] = {"functionCall": {"name": fn["name"],
                                                 "args": parse_arguments(fn.get("arguments"),
                                                                         f"{param}.function.arguments")}}
        signature = split_call_id(call["id"])[1]
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _function_response(m: dict, where: str, names: dict[str, str]) -> dict:
    call_id = m.get("tool_call_id")
    if not call_id:
        raise invalid(f"{where}.tool_call_id", "is required on tool messages")
    name = names.get(call_id)
    if name is None:
        raise invalid(f"{where}.tool_call_id", f"{call_id!r} answers no tool call of an earlier assistant "
                      "message (Gemini needs the function name, found from that call)")
    text = text_of(m.get("content"))
    try:
        value = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        value = None
    response = value if isinstance(value, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


# -- parameters ---------------------------------------------------------------------

def _generation_config(body: dict) -> dict:
    config: dict[str, Any] = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("seed", "seed"),
                     ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if body.get(src) is not None:
            config[dst] = body[src]
    max_tokens = max_tokens_of(body)
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stops = stop_list(body.get("stop"))
    if stops:
        config["stopSequences"] = stops
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt_type == "json_object":
        config["responseMimeType"] = "application/json"
    elif fmt_type == "json_schema":
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            config["responseSchema"] = clean_schema(schema, "response_format.json_schema.schema")
    elif fmt_type not in (None, "text"):
        raise invalid("response_format.type", "must be text, json_object or json_schema")
    budget = reasoning_budget(body.get("reasoning_effort"))
    if budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
    return config


def _declaration(fn: dict, where: str) -> dict:
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    params = fn.get("parameters")
    if isinstance(params, dict):
        cleaned = clean_schema(params, f"{where}.parameters")
        # A function without arguments has no parameters (Gemini refuses an
        # OBJECT schema with no properties).
        if cleaned.get("properties") or cleaned.get("type") not in (None, "object"):
            out["parameters"] = cleaned
    return out


def _tool_config(choice: Any) -> dict | None:
    named = tool_choice_name(choice)
    if named is not None:
        mode: dict[str, Any] = {"mode": "ANY", "allowedFunctionNames": [named]}
    elif choice == "required":
        mode = {"mode": "ANY"}
    elif choice == "none":
        mode = {"mode": "NONE"}
    elif choice == "auto":
        mode = {"mode": "AUTO"}
    else:
        return None
    return {"functionCallingConfig": mode}
