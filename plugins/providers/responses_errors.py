"""A Responses API request's errors in the Responses API's own terms.

A request to a model whose upstream does not serve the Responses API is translated to
the canonical (Chat Completions) form, and what refuses it after that (a translating
provider, a limit or a budget) names chat fields: ``messages[2].tool_calls[0].function
.arguments``, ``max_tokens``, ``response_format``. The client sent ``input[1].arguments``,
``max_output_tokens``, ``text.format``: ``in_responses_terms`` renames ``param`` and the
message's mentions of it. The index map is made again from the body, only when an
error needs it (``responses_canonical.Origins``).
"""

from __future__ import annotations

import re

from proxy import Call, ProxyError

from .responses_canonical import Origins, canonical_messages
from .translate import in_client_terms

#: Canonical (chat) request fields -> the Responses fields they were made from.
FIELDS = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
          "reasoning_effort": "reasoning.effort", "response_format": "text.format", "logprobs": "top_logprobs",
          "response_format.type": "text.format.type", "response_format.json_schema": "text.format",
          "messages": "input"}
# The same names in an error's words ("lower max_tokens", "raise max_completion_tokens above 1024").
WORDS = {name: FIELDS[name] for name in ("max_completion_tokens", "max_tokens", "reasoning_effort", "response_format")}
_MESSAGE = re.compile(r"messages\[(\d+)\](.*)", re.S)
_TOOL_CALL = re.compile(r"\.tool_calls\[(\d+)\](.*)", re.S)
_TOOL = re.compile(r"tools\[(\d+)\]\.function(.*)", re.S)
# Inside a message: chat's names -> the Responses item's.
_CALL_FIELDS = {".function.arguments": ".arguments", ".function.name": ".name", ".id": ".call_id", ".function": ""}
_OUTPUT_FIELDS = {".tool_call_id": ".call_id", ".content": ".output"}


def in_responses_terms(call: Call, err: ProxyError) -> ProxyError:
    """``err`` naming the Responses fields the client sent."""
    return in_client_terms(err, lambda param: _path(call.body, param), WORDS)


def _path(body: dict, param: str) -> str:
    """The Responses field a canonical request's ``param`` was made from."""
    if param in FIELDS:
        return FIELDS[param]
    if param.startswith("response_format.json_schema.schema"):
        return "text.format.schema" + param[len("response_format.json_schema.schema"):]
    tool = _TOOL.fullmatch(param)
    if tool is not None:  # Responses tools are flat: tools[i].name, tools[i].parameters
        return f"tools[{tool.group(1)}]{tool.group(2)}"
    message = _MESSAGE.fullmatch(param)
    if message is None:
        return param
    origins = Origins()
    canonical_messages(body, origins)
    m, rest = int(message.group(1)), message.group(2)
    if m >= len(origins.messages):
        return param
    where = origins.messages[m]
    if where in ("instructions", "input"):  # a string: the whole of it
        return where
    tool_call = _TOOL_CALL.fullmatch(rest)
    if tool_call is not None:
        item = origins.tool_calls.get((m, int(tool_call.group(1))))
        return item + _CALL_FIELDS.get(tool_call.group(2), tool_call.group(2)) if item is not None else param
    if (body.get("input") or [])[int(where[6:-1])].get("type") == "function_call_output":
        for chat, responses in _OUTPUT_FIELDS.items():
            if rest.startswith(chat):
                return where + responses + rest[len(chat):]
    if rest.endswith(".image_url.url"):  # a Responses image part's image_url is the URL itself
        rest = rest[:-len(".url")]
    return where + rest
