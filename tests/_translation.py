"""Shared pieces of the provider-translation tests: the gateway config over the
fixture mocks, the requests, and how each SDK's answer is assembled into one
comparable shape (text, tool calls, finish reason, canonical usage)."""

from __future__ import annotations

from dataclasses import dataclass

import anthropic
import openai

UPSTREAMS = ("openai", "anthropic", "gemini")
SCENARIOS = ("text", "tools", "thinking", "length")
ERRORS = ("rate_limited", "overloaded", "invalid", "auth", "server_error")

TEXT = "Hello! Here's the café menu 🍰: soup, salad, and cake."
TOOLS_TEXT = "I'll check the weather and the time for you."
TOOL_CALLS = [("get_weather", {"location": "San Francisco, CA", "unit": "celsius"}),
              ("get_time", {"timezone": "Asia/Tokyo"}), ("list_alerts", {})]
THINKING = "Let me think about 2 + 2. Adding them gives 4."


@dataclass(frozen=True)
class Expected:
    text: str
    calls: list
    finish: str  # OpenAI finish_reason
    usage: tuple[int, int, int, int]  # prompt, completion, cached, reasoning


def expected(scenario: str, upstream: str) -> Expected:
    if scenario == "text":
        return Expected(TEXT, [], "stop", (35, 15, 20, 0))
    if scenario == "tools":
        return Expected(TOOLS_TEXT, TOOL_CALLS, "tool_calls", (420, 95, 0, 0))
    if scenario == "thinking":
        # Anthropic does not report thinking tokens apart from output tokens.
        return Expected("2 + 2 = 4.", [], "stop", (40, 120, 0, 0 if upstream == "anthropic" else 100))
    if scenario == "length":
        return Expected("The answer is", [], "length", (12, 3, 0, 0))
    raise AssertionError(scenario)


STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


def config(mock_root: str) -> dict:
    """Providers of the three kinds on the fixture mock, and a model per
    upstream x fixture named ``<upstream>-<fixture>``."""
    timeouts = {"connect": 2, "first_byte": 5, "idle": 5, "total": 20}
    providers = {
        "openai": {"kind": "openai", "base_url": mock_root + "/v1", "api_key": "sk-upstream-secret",
                   "timeouts": timeouts},
        "anthropic": {"kind": "anthropic", "base_url": mock_root, "api_key": "sk-ant-upstream-secret",
                      "timeouts": timeouts, "default_max_tokens": 1000},
        "gemini": {"kind": "gemini", "base_url": mock_root, "api_key": "g-upstream-secret", "timeouts": timeouts},
    }
    models = {}
    for up in UPSTREAMS:
        for fixture in (*SCENARIOS, "midstream_error", *ERRORS):
            models[f"{up}-{fixture}"] = {"provider": up, "model": fixture, "price": {"input": 1.0, "output": 2.0}}
    return {"server": {"access_log": "off"}, "providers": providers, "models": models,
            "plugins": {"enabled": []}}


OPENAI_TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                       "title": "GetWeather", "additionalProperties": False,
                       "properties": {"location": {"type": "string", "title": "Location"},
                                      "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                                               "default": "celsius"},
                                      "days": {"type": ["integer", "null"], "examples": [1]},
                                      "tags": {"type": "array"}},
                       "required": ["location"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a timezone",
        "parameters": {"type": "object", "properties": {"timezone": {"$ref": "#/$defs/tz"}},
                       "$defs": {"tz": {"type": "string", "title": "Timezone"}}}}},
    {"type": "function", "function": {"name": "list_alerts", "description": "Active alerts",
                                      "parameters": {"type": "object", "properties": {}}}},
]

ANTHROPIC_TOOLS = [{"name": t["function"]["name"], "description": t["function"]["description"],
                    "input_schema": t["function"]["parameters"]} for t in OPENAI_TOOLS]


@dataclass
class Assembled:
    text: str
    calls: list  # [(name, args dict)]
    finish: str  # OpenAI finish_reason vocabulary
    usage: tuple[int, int, int, int]
    reasoning: str = ""
    ids: tuple = ()


def _openai_usage(u) -> tuple[int, int, int, int]:
    cached = (u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0
    reasoning = (u.completion_tokens_details.reasoning_tokens or 0) if u.completion_tokens_details else 0
    return (u.prompt_tokens, u.completion_tokens, cached, reasoning)


async def openai_call(client: openai.AsyncOpenAI, model: str, stream: bool, **kw) -> Assembled:
    import json
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    if not stream:
        r = await client.chat.completions.create(model=model, messages=messages, **kw)
        m = r.choices[0].message
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in m.tool_calls or []]
        return Assembled(m.content or "", calls, r.choices[0].finish_reason, _openai_usage(r.usage),
                         (m.model_extra or {}).get("reasoning_content") or "",
                         tuple(c.id for c in m.tool_calls or []))
    text, reasoning, finish, usage = [], [], None, None
    calls: dict[int, dict] = {}
    s = await client.chat.completions.create(model=model, messages=messages, stream=True,
                                             stream_options={"include_usage": True}, **kw)
    async for chunk in s:
        if chunk.usage is not None:
            usage = _openai_usage(chunk.usage)
        for choice in chunk.choices:
            d = choice.delta
            text.append(d.content or "")
            reasoning.append((d.model_extra or {}).get("reasoning_content") or "")
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
                if tc.id:
                    assert slot["id"] is None, "a tool call's id came twice"
                    slot["id"] = tc.id
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    slot["args"] += tc.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    assert sorted(calls) == list(range(len(calls))), "tool-call indexes must count 0, 1, ..."
    ordered = [calls[i] for i in sorted(calls)]
    return Assembled("".join(text), [(c["name"], json.loads(c["args"])) for c in ordered], finish, usage,
                     "".join(reasoning), tuple(c["id"] for c in ordered))


def _anthropic_assembled(msg) -> Assembled:
    text = "".join(b.text for b in msg.content if b.type == "text")
    thinking = "".join(b.thinking for b in msg.content if b.type == "thinking")
    calls = [(b.name, b.input) for b in msg.content if b.type == "tool_use"]
    u = msg.usage
    read = u.cache_read_input_tokens or 0
    prompt = u.input_tokens + (u.cache_creation_input_tokens or 0) + read
    finish = {v: k for k, v in STOP_REASONS.items()}[msg.stop_reason]
    return Assembled(text, calls, finish, (prompt, u.output_tokens, read, None), thinking,
                     tuple(b.id for b in msg.content if b.type == "tool_use"))


async def anthropic_call(client: anthropic.AsyncAnthropic, model: str, stream: bool, **kw) -> Assembled:
    args = {"model": model, "max_tokens": 2048, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hi there"}], **kw}
    if not stream:
        return _anthropic_assembled(await client.messages.create(**args))
    async with client.messages.stream(**args) as s:
        return _anthropic_assembled(await s.get_final_message())


async def post_raw(url: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """POST a JSON body (or raw bytes); (status, headers, raw body bytes)."""
    import aiohttp

    kw = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with aiohttp.ClientSession() as http, http.post(url, headers=headers or {}, **kw) as r:
        return r.status, dict(r.headers), await r.read()
