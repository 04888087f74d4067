"""Small helpers shared by the translating adapters (Anthropic, Gemini).

Translation is strict: a parameter that cannot be honoured upstream is either
dropped or mapped as ``docs/providers.md`` documents, or refused here with a
400 that names the parameter and says why. Nothing is silently approximated.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from proxy import ProxyError


def refuse(param: str, why: str, provider: str) -> ProxyError:
    """A 400 for a parameter the provider kind cannot honour."""
    return ProxyError(400, f"'{param}' is not supported by {provider} upstreams: {why}",
                      param=param, code="unsupported_parameter")


def invalid(param: str, why: str) -> ProxyError:
    """A 400 for a malformed field found while translating."""
    return ProxyError(400, f"'{param}' {why}", param=param, code="invalid_request")


def text_of(content: Any) -> str:
    """The text of an OpenAI message content (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<mime>;base64,<data>`` -> (mime, data); None for other URLs."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")] or "application/octet-stream", data


def parse_arguments(arguments: Any, param: str) -> dict:
    """A tool call's JSON ``arguments`` as an object (empty text is ``{}``)."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        raise invalid(param, "must be a JSON object encoded as a string") from None
    if not isinstance(value, dict):
        raise invalid(param, "must encode a JSON object")
    return value


def dumps_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def stop_list(stop: Any) -> list[str] | None:
    """OpenAI ``stop`` (string or list) as a list, or None when absent/empty."""
    if stop is None:
        return None
    items = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) for s in items):
        raise invalid("stop", "must be a string or a list of strings")
    return items or None


def max_tokens_of(body: dict) -> int | None:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    return value


def check_common_refusals(body: dict, provider: str) -> None:
    """Parameters neither Anthropic nor Gemini can answer faithfully."""
    n = body.get("n")
    if n is not None and n != 1:
        raise refuse("n", "only one choice per request can be generated; send n=1 or omit it", provider)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise refuse("logprobs", "token log probabilities are not returned", provider)
    if body.get("logit_bias"):
        raise refuse("logit_bias", "token biasing has no equivalent", provider)
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise refuse("functions", "the deprecated functions API is not translated; send 'tools' and "
                     "'tool_choice' instead", provider)
    modalities = body.get("modalities")
    if modalities and any(m != "text" for m in modalities):
        raise refuse("modalities", "only text output is translated", provider)
    if body.get("audio") is not None:
        raise refuse("audio", "audio output is not translated", provider)
    if body.get("prediction") is not None:
        raise refuse("prediction", "predicted outputs have no equivalent", provider)
    if body.get("web_search_options") is not None:
        raise refuse("web_search_options", "built-in web search is not translated", provider)
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(tool.get("function"), dict) or not tool["function"].get("name"):
            raise invalid(f"tools[{i}]", "must be {\"type\": \"function\", \"function\": {\"name\", ...}}")


def tool_choice_name(choice: Any) -> str | None:
    """The function name of a named tool_choice, else None."""
    if isinstance(choice, dict):
        fn = choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return fn["name"]
        raise invalid("tool_choice", "must be 'auto', 'none', 'required' or "
                      "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    if choice not in (None, "auto", "none", "required"):
        raise invalid("tool_choice", "must be 'auto', 'none', 'required' or a named function")
    return None


# reasoning_effort -> thinking budget tokens (Anthropic budget_tokens, Gemini thinkingBudget).
REASONING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}


def reasoning_budget(effort: Any) -> int | None:
    """Budget for ``reasoning_effort``; 0 for none/minimal; None when absent."""
    if effort is None:
        return None
    if effort in ("none", "minimal"):
        return 0
    if not isinstance(effort, str) or effort not in REASONING_BUDGETS:
        raise invalid("reasoning_effort", "must be one of none, minimal, low, medium, high")
    return REASONING_BUDGETS[effort]


def in_client_terms(err: ProxyError, path: Callable[[str], str], words: Mapping[str, str]) -> ProxyError:
    """``err``, raised about a translated (canonical) request, naming the client's own fields:
    ``param`` as ``path(param)``, and in its message that name and each of ``words`` (chat's
    field names, as whole words) as the client's. An upstream's error keeps its own words."""
    if (err.code or "").startswith("upstream"):
        return err
    param = err.param
    try:
        renamed = path(param) if param else param
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):  # a body the path map cannot read
        renamed = param
    message = err.message
    if param and renamed != param:
        quoted = f"'{param}'"
        message = message.replace(quoted, f"'{renamed}'") if quoted in message else message.replace(param, renamed)
    if words:
        message = re.sub(r"\b(" + "|".join(map(re.escape, words)) + r")\b", lambda m: words[m.group(1)], message)
    if renamed == param and message == err.message:
        return err
    out = ProxyError(err.status, message, code=err.code, param=renamed, headers=err.headers, type=err.type,
                     extra=err.extra)
    out.style = err.style
    return out
