"""A request field holding a list or an object where a name is expected, through the real
server on every kind of provider: a 400 naming the field, never a 500. Found by mutating each
field of a valid body of every model route. Before: ``reasoning_effort: []`` (chat, to an
Anthropic or Gemini model), ``reasoning: {"effort": {}}`` (Responses, the same),
``input[0].role: []`` (Responses, any model) and ``response_format: []`` (speech) were 500s:
a membership test of an unhashable value in a set (TypeError)."""

from __future__ import annotations

import aiohttp
import pytest
from business import DEMO, bearer
from test_hostile_translation import running  # noqa: F401  (the fixture: OpenAI, Claude and Gemini upstreams)

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("value", [[], {}, ["low"], {"a": 1}])
@pytest.mark.parametrize(("path", "body", "param", "models"), [
    ("/chat/completions", lambda v: {"messages": HI, "reasoning_effort": v}, "reasoning_effort", ("claude", "gem")),
    ("/responses", lambda v: {"input": "hi", "reasoning": {"effort": v}}, "reasoning.effort", ("claude", "gem")),
    ("/responses", lambda v: {"input": [{"role": v, "content": "hi"}]}, "input[0].role", ("echo", "up", "claude")),
    ("/audio/speech", lambda v: {"input": "hi", "voice": "alloy", "response_format": v}, "response_format",
     ("echo",)),
], ids=["chat-effort", "responses-effort", "responses-role", "speech-format"])
async def test_a_list_or_object_for_a_name_is_a_400(running, value, path, body, param, models):  # noqa: F811
    async with aiohttp.ClientSession() as s:
        for model in models:
            async with s.post(running.url + path, json={"model": model, **body(value)}, headers=bearer(DEMO)) as r:
                answer = await r.json()
            assert (r.status, answer["error"]["param"]) == (400, param), (model, answer)
