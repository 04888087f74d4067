"""The core's request-path shortcuts answer what the general code they skip answers.

``Usage.from_openai`` takes two JSON integers without details straight (no ``int()`` calls,
no empty dicts) and ``Usage`` checks its counts with chained comparisons (no ``min``/``max``);
``validate_chat`` looks only at the optional fields a body has (a refusal is made again in the
table's order, so the same field is named) and formats a message's place only for an error.
Each is held against the definition it replaced, on inputs built from the edge cases."""

from __future__ import annotations

import random
from typing import Any

from proxy.call import Usage
from proxy.errors import ProxyError
from proxy.validate import _CHAT_OPTIONAL, CHAT_ROLES, _check_message_extras, _check_parts, check_model, validate_chat


def _general_from_openai(usage: Any) -> tuple | None:
    """``Usage.from_openai`` (and the rule of ``Usage.count``) before the shortcuts, as a tuple of the counts:
    a count is a JSON integer (or a float without a fraction) from 0 to ``MAX_TOKENS``; a detail may be null."""
    if not isinstance(usage, dict) or ("prompt_tokens" not in usage and "completion_tokens" not in usage):
        return None

    def count(value: Any, null_is_zero: bool = False) -> int:
        if value is None and null_is_zero:
            return 0
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(value)
        if not 0 <= value <= Usage.MAX_TOKENS:
            raise ValueError(value)
        return int(value)

    try:
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        reasoning = count(completion_details.get("reasoning_tokens"), True)
        cached = count(prompt_details.get("cached_tokens"), True)
        # No output (or prompt) count: unknown (counted by the gateway), the reasoning (cached) tokens its floor.
        unknown, prompt_unknown = "completion_tokens" not in usage, "prompt_tokens" not in usage
        return (cached if prompt_unknown else count(usage["prompt_tokens"]),
                reasoning if unknown else count(usage["completion_tokens"]), cached, reasoning, unknown, prompt_unknown)
    except (ValueError, AttributeError):
        return None


def _counts(usage: Usage | None) -> tuple | None:
    if usage is None:
        return None
    return (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens,
            usage.completion_unknown, usage.prompt_unknown)


def test_from_openai_shortcut_matches_the_general_reading() -> None:
    rng = random.Random(21)
    values = [None, 0, 1, 7, -1, 10**9, 10**9 + 1, True, False, 2.5, "12", "x", [], 1e300]
    details = [None, {}, {"cached_tokens": 3}, {"reasoning_tokens": 2}, {"cached_tokens": -1}, "no", 0, []]
    for _ in range(20_000):
        usage: dict = {}
        for name in ("prompt_tokens", "completion_tokens"):
            if rng.random() < 0.85:
                usage[name] = rng.choice(values)
        for name in ("prompt_tokens_details", "completion_tokens_details"):
            if rng.random() < 0.3:
                usage[name] = rng.choice(details)
        assert _counts(Usage.from_openai(usage)) == _general_from_openai(usage), usage
    assert Usage.from_openai([1]) is None
    assert _counts(Usage.from_openai({"prompt_tokens": 5})) == (5, 0, 0, 0, True, False)


def test_usage_refuses_what_it_refused() -> None:
    for kwargs, text in (({"prompt_tokens": -1}, "negative"), ({"cache_write_tokens": 10**9 + 1}, "above"),
                         ({"completion_tokens": -2, "cached_tokens": 10**10}, "negative")):
        try:
            Usage(**kwargs)
        except ValueError as exc:
            assert text in str(exc)
        else:
            raise AssertionError(kwargs)


def _general_validate_chat(body: dict) -> None:
    """``validate_chat`` before its shortcuts."""
    check_model(body)
    messages = body.get("messages")
    if messages is None:
        raise ProxyError(400, "'messages' is required: a list of {role, content} objects", param="messages",
                         code="missing_messages")
    if not isinstance(messages, list) or not messages:
        raise ProxyError(400, "'messages' must be a non-empty list", param="messages", code="invalid_request")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ProxyError(400, f"'{where}' must be an object with 'role' and 'content'", param=where,
                             code="invalid_request")
        role = m.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise ProxyError(400, f"'{where}.role' must be one of {', '.join(sorted(CHAT_ROLES))}, got {role!r}",
                             param=f"{where}.role", code="invalid_request")
        content = m.get("content")
        if content is not None and type(content) is not str:
            _check_parts(content, f"{where}.content")
        if "tool_calls" in m or "tool_call_id" in m or "name" in m:
            _check_message_extras(m, where)
    for name, check in _CHAT_OPTIONAL.items():
        if name in body:
            check(body, name)


def _outcome(check, body: dict) -> tuple | None:
    try:
        check(body)
    except ProxyError as err:
        return err.status, err.message, err.param, err.code
    return None


def test_validate_chat_shortcuts_match_the_general_checks() -> None:
    rng = random.Random(5)
    messages = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "hi"}, {"role": "bad"}],
                [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": 1}]}],
                [{"role": "assistant", "content": None, "tool_calls": "x"}], ["no"], [], None, "x",
                # the usual messages' shortcut: each way out of it, and what it must let through whole
                [{"role": "system", "content": "s"}, {"role": "user", "content": "t"}],
                [{"role": "user", "content": "t", "name": "bob"}], [{"role": "user", "content": "t", "name": 5}],
                [{"role": ["user"], "content": "t"}], [{"role": {"a": 1}, "content": "t"}],
                [{"role": 5, "content": "t"}], [{"role": None, "content": "t"}], [{"role": "User", "content": "t"}],
                [{"content": "t", "name": "user"}], [{"role": "user", "text": "t"}], [{"role": "user"}],
                [{"role": "user", "content": None}], [{"role": "user", "content": ["x"]}],
                [{"role": "user", "content": "t"}, "no"], [{"role": "user", "content": "t"}, {"role": []}],
                [{"role": "tool", "content": "t", "tool_call_id": 3}], [{"role": "user", "content": 7}],
                [{"role": "assistant", "content": "t"}, {"role": "user", "content": [{"type": "image_url"}]}],
                ({"role": "user", "content": "t"},), [[{"role": "user", "content": "t"}]]]
    options: dict[str, list] = {
        "stream": [True, False, "yes", None, 0, 1, [], {}], "stream_options": [{"include_usage": True}, "x", None],
        "max_tokens": [1, 256, 0, -1, "9", 2.5, True, False, None, 10**30, 1.0, []],
        "max_completion_tokens": [5, 0, "x", None, True, -3],
        "n": [1, 2, 128, 129, 0], "temperature": [0, 1.5, 3, "hot"], "top_p": [0.5, 2, None],
        "tools": [[], "x", [{"type": "function", "function": {"name": "f"}}]], "stop": ["x", ["a", "b"], 5, [1]],
        "user": ["u"], "metadata": [{}],
    }
    for _ in range(20_000):
        body: dict = {"model": rng.choice(["m", "m", "", 5, " ", "a b", "m\n", "m\x00", "m\u00a0", "\u200b", None,
                                           ["m"]])}
        chosen = messages[rng.randrange(len(messages))]
        if chosen is not None:
            body["messages"] = chosen
        for name in rng.sample(sorted(options), rng.randrange(5)):
            body[name] = rng.choice(options[name])
        assert _outcome(validate_chat, body) == _outcome(_general_validate_chat, body), body
