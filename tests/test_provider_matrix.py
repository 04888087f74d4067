"""Every provider pair, through the real gateway with the official SDKs:
client (openai | anthropic) x upstream (openai | anthropic | gemini) x
fixture (text, tools, thinking, length), stream and not. Both give the same
assembled message, the fixture's text, tool calls (arguments parse as JSON
and are equal), finish reason and usage; and billing (the usage hook) sees
the same token counts for every pair."""

from __future__ import annotations

import anthropic
import openai
import pytest
from _translation import (
    ANTHROPIC_TOOLS,
    OPENAI_TOOLS,
    SCENARIOS,
    THINKING,
    UPSTREAMS,
    anthropic_call,
    config,
    expected,
    openai_call,
)

from benchmarks.mock_fixtures import make_app as make_fixture_app
from proxy import hookimpl


class UsageRecorder:
    """What billing sees: the usage of every call, as the core hands it over."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int, int]] = []

    @hookimpl
    async def tollway_usage(self, call):
        u = call.billing.usage
        self.seen.append((u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens))


@pytest.fixture(params=[None, 7], ids=["whole", "split7"])
async def gateway(request, aiohttp_server, start_gateway):
    """The gateway over the fixture mocks; ``split7`` makes the mock write its
    streams 7 bytes at a time."""
    mock = await aiohttp_server(make_fixture_app(split=request.param))
    recorder = UsageRecorder()
    running = await start_gateway(config(str(mock.make_url("")).rstrip("/")), plugins=(recorder,))
    running.recorder = recorder
    return running


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_openai_client(gateway, upstream, scenario):
    async with openai.AsyncOpenAI(base_url=gateway.url, api_key="sk-client", max_retries=0) as client:
        await _openai_pair(client, upstream, scenario)
    # Billing gets the same usage whatever the client's protocol or streaming.
    assert gateway.recorder.seen == [expected(scenario, upstream).usage] * 2


async def _openai_pair(client, upstream, scenario):
    kw = {"tools": OPENAI_TOOLS} if scenario == "tools" else {}
    if scenario == "thinking":
        kw["reasoning_effort"] = "low"
    model = f"{upstream}-{scenario}"
    whole = await openai_call(client, model, stream=False, **kw)
    streamed = await openai_call(client, model, stream=True, **kw)
    want = expected(scenario, upstream)
    for got in (whole, streamed):
        assert got.text == want.text
        assert got.calls == want.calls
        assert got.finish == want.finish
        assert got.usage == want.usage
        assert all(got.ids) and len(set(got.ids)) == len(got.ids)
    if scenario == "thinking" and upstream != "openai":
        assert whole.reasoning == streamed.reasoning == THINKING


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_anthropic_client(gateway, upstream, scenario):
    async with anthropic.AsyncAnthropic(base_url=gateway.root, api_key="sk-client", max_retries=0) as client:
        await _anthropic_pair(client, upstream, scenario)
    assert gateway.recorder.seen == [expected(scenario, upstream).usage] * 2


async def _anthropic_pair(client, upstream, scenario):
    kw = {"tools": ANTHROPIC_TOOLS} if scenario == "tools" else {}
    if scenario == "thinking":
        kw["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    model = f"{upstream}-{scenario}"
    whole = await anthropic_call(client, model, stream=False, **kw)
    streamed = await anthropic_call(client, model, stream=True, **kw)
    want = expected(scenario, upstream)
    for got in (whole, streamed):
        assert got.text == want.text
        assert got.calls == want.calls
        assert got.finish == want.finish
        assert got.usage[:3] == want.usage[:3]
        assert all(got.ids) and len(set(got.ids)) == len(got.ids)
    if scenario == "thinking" and upstream != "openai":
        assert whole.reasoning == streamed.reasoning == THINKING
