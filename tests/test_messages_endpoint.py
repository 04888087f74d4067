"""``POST /v1/messages``: Anthropic clients against every upstream. Bad input in
Anthropic's error shape, the byte passthrough to Anthropic upstreams, the
gateway's usage fields (``cost``) in native and translated streams, errors
and mid-stream errors as Anthropic events, tool round trips."""

from __future__ import annotations

import anthropic
import openai
import orjson
import pytest
from _translation import ANTHROPIC_TOOLS, config, post_raw

from benchmarks.mock_fixtures import FIXTURES, LAST_KEY
from benchmarks.mock_fixtures import make_app as make_fixture_app
from proxy import hookimpl


class CostPlugin:
    """Stands in for the billing plugin: adds a cost to the usage clients see."""

    @hookimpl
    async def tollway_usage(self, call):
        call.billing.usage_extra["cost"] = 0.0012


@pytest.fixture
async def env(aiohttp_server, start_gateway):
    mock = await aiohttp_server(make_fixture_app())
    running = await start_gateway(config(str(mock.make_url("")).rstrip("/")))
    client = anthropic.AsyncAnthropic(base_url=running.root, api_key="sk-client", max_retries=0)
    yield running, mock, client
    await client.close()


@pytest.fixture
async def billed(aiohttp_server, start_gateway):
    mock = await aiohttp_server(make_fixture_app())
    return await start_gateway(config(str(mock.make_url("")).rstrip("/")), plugins=(CostPlugin(),))


def events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.split(b"\n\n"):
        if block.strip():
            name, data = block.split(b"\n", 1)
            out.append((name[len(b"event: "):].decode(), orjson.loads(data[len(b"data: "):])))
    return out


GOOD = {"model": "anthropic-text", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("change, field", [
    ({"max_tokens": None}, "max_tokens"),
    ({"messages": None}, "messages"),
    ({"model": None}, "model"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
    ({"temperature": 1.5}, "temperature"),
    ({"stream": "yes"}, "stream"),
    ({"system": 5}, "system"),
    ({"tools": [{"description": "x"}]}, "tools.0.name"),
    ({"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "thinking.budget_tokens"),
])
async def test_bad_input_is_an_anthropic_400_naming_the_field(env, change, field):
    running, mock, client = env
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    status, _, raw = await post_raw(running.root + "/v1/messages", body)
    err = orjson.loads(raw)
    assert status == 400 and err["type"] == "error"
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith(field + ":")


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b""])
async def test_malformed_body_is_an_anthropic_400(env, raw):
    running, mock, client = env
    status, _, body = await post_raw(running.root + "/v1/messages", raw, {"Content-Type": "application/json"})
    err = orjson.loads(body)
    assert status == 400 and err["type"] == "error" and err["error"]["type"] == "invalid_request_error"


async def test_unknown_model_is_an_anthropic_404(env):
    running, mock, client = env
    with pytest.raises(anthropic.NotFoundError) as exc:
        await client.messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["error"]["type"] == "not_found_error"


async def test_passthrough_is_byte_exact(env):
    running, mock, client = env
    body = {**GOOD, "stream": True, "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
            "future_field": {"kept": True}}
    status, headers, raw = await post_raw(running.root + "/v1/messages", body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert raw == (FIXTURES / "anthropic" / "text.sse").read_bytes()
    sent = mock.app[LAST_KEY]["anthropic"]["body"]
    assert sent == {**body, "model": "text"}  # only the model name changed
    status, _, raw = await post_raw(running.root + "/v1/messages", GOOD)
    assert orjson.loads(raw) == orjson.loads((FIXTURES / "anthropic" / "text.json").read_bytes())


async def test_cost_in_native_stream_and_answer(billed):
    status, _, raw = await post_raw(billed.root + "/v1/messages", {**GOOD, "stream": True})
    got = events(raw)
    fixture = events((FIXTURES / "anthropic" / "text.sse").read_bytes())
    assert [n for n, _ in got] == [n for n, _ in fixture]
    delta = dict(got)["message_delta"]
    assert delta["usage"] == {"output_tokens": 15, "cost": 0.0012}
    assert [e for e in got if e[0] != "message_delta"] == [e for e in fixture if e[0] != "message_delta"]
    status, _, raw = await post_raw(billed.root + "/v1/messages", GOOD)
    assert orjson.loads(raw)["usage"]["cost"] == 0.0012


@pytest.mark.parametrize("upstream", ["gemini", "openai"])
async def test_cost_in_translated_stream(billed, upstream):
    status, _, raw = await post_raw(billed.root + "/v1/messages", {**GOOD, "model": f"{upstream}-text",
                                                                   "stream": True})
    got = events(raw)
    assert got[0][0] == "message_start" and got[-1][0] == "message_stop"
    assert dict(got)["message_delta"]["usage"] == {"input_tokens": 15, "cache_creation_input_tokens": 0,
                                                   "cache_read_input_tokens": 20, "output_tokens": 15,
                                                   "cost": 0.0012}


@pytest.mark.parametrize("upstream, fixture, status, kind", [
    ("anthropic", "rate_limited", 429, "rate_limit_error"),
    ("anthropic", "overloaded", 503, "overloaded_error"),
    ("anthropic", "auth", 502, "api_error"),
    ("anthropic", "invalid", 400, "invalid_request_error"),
    ("gemini", "rate_limited", 429, "rate_limit_error"),
    ("gemini", "auth", 502, "api_error"),
    ("openai", "overloaded", 503, "overloaded_error"),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_errors_in_anthropic_shape(env, upstream, fixture, status, kind, stream):
    running, mock, client = env
    got, headers, raw = await post_raw(running.root + "/v1/messages",
                                       {**GOOD, "model": f"{upstream}-{fixture}", "stream": stream})
    err = orjson.loads(raw)
    assert got == status and err["type"] == "error" and err["error"]["type"] == kind
    if status == 429:
        assert headers["Retry-After"] == ("12" if upstream == "anthropic" else "17")
    assert "secret" not in err["error"]["message"]


@pytest.mark.parametrize("upstream", ["anthropic", "gemini", "openai"])
async def test_midstream_error_is_an_anthropic_error_event(env, upstream):
    running, mock, client = env
    status, _, raw = await post_raw(running.root + "/v1/messages",
                                    {**GOOD, "model": f"{upstream}-midstream_error", "stream": True})
    got = events(raw)
    assert status == 200 and got[0][0] == "message_start"
    name, data = got[-1]
    # The OpenAI adapter reports in-band errors as 502 (OpenAI's error chunk has no status).
    kind = "api_error" if upstream == "openai" else "overloaded_error"
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == kind
    assert any(d.get("delta", {}).get("text") == "Partial answ" for _, d in got)
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(model=f"{upstream}-midstream_error", max_tokens=10,
                                          messages=[{"role": "user", "content": "x"}]) as s:
            await s.get_final_message()


@pytest.mark.parametrize("upstream", ["gemini", "openai"])
async def test_tool_round_trip(env, upstream):
    running, mock, client = env
    first = await client.messages.create(model=f"{upstream}-tools", max_tokens=500, tools=ANTHROPIC_TOOLS,
                                         tool_choice={"type": "auto", "disable_parallel_tool_use": False},
                                         messages=[{"role": "user", "content": "weather, time, alerts"}])
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": "ok", "is_error": u.name == "get_time"}
               for u in uses]
    history = [{"role": "user", "content": "weather, time, alerts"},
               {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
               {"role": "user", "content": [*results, {"type": "text", "text": "go on"}]}]
    second = await client.messages.create(model=f"{upstream}-text", max_tokens=500, tools=ANTHROPIC_TOOLS,
                                          messages=history)
    assert second.stop_reason == "end_turn"
    sent = mock.app[LAST_KEY][upstream]["body"]
    if upstream == "openai":
        roles = [m["role"] for m in sent["messages"]]
        assert roles == ["user", "assistant", "tool", "tool", "tool", "user"]
        assert [m["content"] for m in sent["messages"][2:5]] == ["ok", "Error: ok", "ok"]
        # OpenAI's current name for the cap: its reasoning models refuse max_tokens.
        assert sent["max_completion_tokens"] == 500 and "max_tokens" not in sent
        assert sent["tools"][0]["type"] == "function"
    else:
        responses = [p["functionResponse"]["name"] for p in sent["contents"][2]["parts"] if "functionResponse" in p]
        assert responses == ["get_weather", "get_time", "list_alerts"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_an_openai_provider_can_send_the_cap_under_the_old_name(aiohttp_server, start_gateway, field):
    """For OpenAI-compatible servers that only know ``max_tokens``: ``max_tokens_field``."""
    mock = await aiohttp_server(make_fixture_app())
    cfg = config(str(mock.make_url("")).rstrip("/"))
    cfg["providers"]["openai"]["max_tokens_field"] = field
    running = await start_gateway(cfg)
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key="k", max_retries=0) as client:
        await client.messages.create(model="openai-text", max_tokens=77, messages=[{"role": "user", "content": "x"}])
    sent = mock.app[LAST_KEY]["openai"]["body"]
    other = "max_completion_tokens" if field == "max_tokens" else "max_tokens"
    assert sent[field] == 77 and other not in sent


async def test_a_bad_max_tokens_field_stops_start_up(start_gateway):
    from proxy.schema import ConfigError

    cfg = config("http://127.0.0.1:9")
    cfg["providers"]["openai"]["max_tokens_field"] = "max_output_tokens"
    with pytest.raises(ConfigError, match="max_tokens_field"):
        await start_gateway(cfg)


async def test_server_tools_are_refused_for_other_upstreams(env):
    running, mock, client = env
    with pytest.raises(anthropic.BadRequestError) as exc:
        await client.messages.create(model="gemini-text", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                                     tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "tools.0.type" in exc.value.body["error"]["message"]


async def test_builtin_mock_provider_serves_anthropic_clients(start_gateway):
    from conftest import base_config

    running = await start_gateway(base_config())
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key="k", max_retries=0) as client:
        whole = await client.messages.create(model="echo", max_tokens=50,
                                             messages=[{"role": "user", "content": "ping pong"}])
        async with client.messages.stream(model="echo", max_tokens=50,
                                          messages=[{"role": "user", "content": "ping pong"}]) as s:
            streamed = await s.get_final_message()
    for msg in (whole, streamed):
        assert [b.text for b in msg.content] == ["ping pong"]
        assert msg.stop_reason == "end_turn" and msg.usage.output_tokens == 2
    assert whole.usage.input_tokens == streamed.usage.input_tokens > 0


async def test_assistant_block_types_other_upstreams_cannot_take_are_refused(env):
    running, mock, client = env
    with pytest.raises(anthropic.BadRequestError) as exc:
        await client.messages.create(model="openai-text", max_tokens=10, messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search",
                                               "input": {}}]}])
    assert "messages.1.content.0.type" in exc.value.body["error"]["message"]


@pytest.mark.parametrize("upstream", ["anthropic", "gemini"])
async def test_full_business_stack_bills_anthropic_clients(aiohttp_server, start_gateway, upstream):
    """Auth by x-api-key (what the Anthropic SDK sends), pricing's cost in the
    usage the client sees, native and translated, stream and not."""
    from business import ADMIN, ALL, DEMO

    mock = await aiohttp_server(make_fixture_app())
    cfg = config(str(mock.make_url("")).rstrip("/"))
    cfg["server"]["admin_key"] = ADMIN
    cfg["plugins"] = {"enabled": ALL}
    cfg["keys"] = [{"name": "demo", "key": DEMO, "credits": 5.0}]
    running = await start_gateway(cfg)
    # 35 prompt and 15 completion tokens at $1 and $2 per 1M (no cached price: cached tokens cost input).
    cost = (35 * 1.0 + 15 * 2.0) / 1_000_000
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0) as client:
        whole = await client.messages.create(model=f"{upstream}-text", max_tokens=50,
                                             messages=[{"role": "user", "content": "x"}])
        assert whole.usage.model_extra["cost"] == pytest.approx(cost)
        async with client.messages.stream(model=f"{upstream}-text", max_tokens=50,
                                          messages=[{"role": "user", "content": "x"}]) as s:
            streamed = await s.get_final_message()
        assert streamed.usage.output_tokens == 15
    status, _, raw = await post_raw(running.root + "/v1/messages", {**GOOD, "model": f"{upstream}-text",
                                                                   "stream": True}, {"x-api-key": DEMO})
    assert dict(events(raw))["message_delta"]["usage"]["cost"] == pytest.approx(cost)
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError) as exc:
            await client.messages.create(model=f"{upstream}-text", max_tokens=5,
                                         messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "authentication_error"


async def test_prompt_cache_writes_are_billed_at_their_own_price(aiohttp_server, start_gateway):
    """Anthropic bills cache writes above the input price: `price.cache_write` says by how much."""
    from business import ALL, DEMO

    mock = await aiohttp_server(make_fixture_app())
    cfg = config(str(mock.make_url("")).rstrip("/"))
    cfg["plugins"] = {"enabled": ALL}
    cfg["keys"] = [{"name": "demo", "key": DEMO, "credits": 5.0}]
    cfg["models"]["anthropic-text"]["price"] = {"input": 3.0, "output": 15.0, "cached_input": 0.3,
                                                "cache_write": 3.75}
    running = await start_gateway(cfg)
    # The fixture: 10 plain input, 5 written to the cache, 20 read from it, 15 output tokens:
    # 279.75 micro-USD, rounded up to 280 (at the input price the writes would make it 276).
    assert 10 * 3.0 + 5 * 3.75 + 20 * 0.3 + 15 * 15.0 == 279.75
    cost = 280 / 1_000_000
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0) as client:
        answer = await client.messages.create(model="anthropic-text", max_tokens=50,
                                              messages=[{"role": "user", "content": "x"}])
    assert answer.usage.cache_creation_input_tokens == 5 and answer.usage.cache_read_input_tokens == 20
    assert answer.usage.model_extra["cost"] == pytest.approx(cost)
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="anthropic-text", messages=[{"role": "user", "content": "x"}], max_tokens=50)
    assert float(raw.headers["x-tollway-cost"]) == pytest.approx(cost)
