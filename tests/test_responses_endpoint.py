"""POST /v1/responses to an OpenAI upstream (passthrough), GET/DELETE of stored
responses, legacy /v1/completions and Anthropic's count_tokens: through the real
server with the official SDKs, each answer's money checked in the ledger and the
balance (ledger == money taken == what the client was told)."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import openai
import orjson
import pytest
from business import DEMO, add_claude, bearer, biz_config, credits, ledger_rows

from benchmarks.mock_upstream import STATS_KEY
from plugins.accounts.tokens import count_tokens
from plugins.providers.responses_stream import stream_text
from proxy import hookimpl

OTHER = "sk-test-other-key-0002"
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture
async def running(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url, keys=[{"name": "demo", "key": DEMO, "credits": 5.0},
                                                 {"name": "other", "key": OTHER, "credits": 5.0}])
    add_claude(config, mock_upstream.url.removesuffix("/v1"), model="text")
    config["models"]["up"]["context_window"] = 100_000
    return await start_gateway(config)


@pytest.fixture
async def client(running):
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as c:
        yield c


async def ledger(running) -> list[dict]:
    return await ledger_rows(running, "endpoint", "status", "error_code", "prompt", "completion", "cost", "estimated",
                             "client_gone", "key")


async def spent(running, key: str = DEMO) -> int:
    async with aiohttp.ClientSession() as s:
        got = await credits(s, running, key)
    assert got["reserved_micro_usd"] == 0
    assert got["balance_micro_usd"] == 5_000_000 - got["spent_micro_usd"] >= 0
    return got["spent_micro_usd"]


def micro(usd: float) -> int:
    return round(usd * 1_000_000)


async def test_create_non_stream_passes_through_and_bills_the_usage(running, client, mock_upstream):
    raw = await client.responses.with_raw_response.create(model="up", input="hello there", instructions="be brief",
                                                          max_output_tokens=200)
    r = raw.parse()
    assert r.status == "completed" and r.output_text.startswith("tok0")
    assert r.model == "upstream-model"  # the upstream's answer, as sent
    async with aiohttp.ClientSession() as s, s.get(mock_upstream.make_url("/_mock/stats")) as resp:
        body = (await resp.json())["last_body"]
    assert body["model"] == "upstream-model" and body["instructions"] == "be brief" and "stream_options" not in body
    [row] = await ledger(running)
    assert row["endpoint"] == "responses" and row["status"] == 200
    assert (row["prompt"], row["completion"]) == (r.usage.input_tokens, r.usage.output_tokens) == (row["prompt"], 8)
    assert row["cost"] == row["prompt"] * 1 + 8 * 2
    assert micro(r.usage.model_extra["cost"]) == row["cost"] == micro(float(raw.headers["x-tollway-cost"]))
    assert await spent(running) == row["cost"]


async def test_stream_with_the_sdk_helper_bills_the_terminal_events_usage(running, client):
    async with client.responses.stream(model="up", input="hello there") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 8
    assert final.output_text == "".join(f"tok{i} tok"[:8] for i in range(8))
    [row] = await ledger(running)
    assert row["completion"] == final.usage.output_tokens == 8 and row["estimated"] == 0
    assert micro(final.usage.model_extra["cost"]) == row["cost"] == row["prompt"] + 16
    assert await spent(running) == row["cost"]


async def test_stream_bytes_pass_through_unchanged_but_the_terminal_usage_gains_cost(running, mock_upstream):
    # (with its output cap: without one, a metered request goes up with the one it is held for)
    body = {"model": "upstream-model", "input": "hi", "stream": True, "max_output_tokens": 500}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{mock_upstream.url}/responses", json=body) as r:
            direct = await r.read()
        async with s.post(f"{running.url}/responses", json={**body, "model": "up"}, headers=bearer(DEMO)) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            via = await r.read()
    head, _, _ = direct.rpartition(b"event: response.completed")
    assert _zero(via).startswith(_zero(head)) and len(head) > 1000
    last = orjson.loads(via.rstrip().rpartition(b"\ndata: ")[2])
    assert last["type"] == "response.completed" and last["response"]["usage"]["cost"] > 0


def _zero(data: bytes) -> bytes:
    import re
    return re.sub(rb'"created_at":\d+', b'"created_at":0', data)


@pytest.mark.parametrize("terminal", ["incomplete", "failed"])
async def test_incomplete_and_failed_answers_are_billed_from_their_terminal_event(running, client, terminal):
    stream = await client.responses.create(model="up", input="hello", stream=True,
                                           extra_body={"mock": {"terminal": terminal}})
    events = [e async for e in stream]
    assert events[-1].type == f"response.{terminal}"
    usage = events[-1].response.usage
    [row] = await ledger(running)
    assert row["completion"] == usage.output_tokens == 8 and row["estimated"] == 0
    assert row["cost"] == micro(usage.model_extra["cost"]) == row["prompt"] + 16 > 16
    assert await spent(running) == row["cost"]
    # Non-stream too: an incomplete answer's usage is billed.
    r = await client.responses.create(model="up", input="hello", extra_body={"mock": {"terminal": terminal}})
    assert r.status == terminal and micro(r.usage.model_extra["cost"]) == row["cost"]


async def test_a_cut_stream_bills_what_went_out_and_ends_with_an_error_event(running, client):
    stream = await client.responses.create(model="up", input="hello", stream=True, max_output_tokens=500,
                                           extra_body={"mock": {"drop_after": 7}})
    events = [e async for e in stream]
    assert events[-1].type == "error" and events[-1].code == "upstream_disconnected"
    assert events[-1].sequence_number == events[-2].sequence_number + 1
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text
    [row] = await ledger(running)
    assert row["estimated"] == 1 and row["completion"] == await count_tokens(text)
    assert row["cost"] == row["prompt"] + 2 * row["completion"] and await spent(running) == row["cost"]


async def test_a_client_that_hangs_up_is_billed_the_upstreams_usage(running):
    payload = {"model": "up", "input": "hello", "stream": True, "mock": {"chunks": 40, "chunk_delay": 0.01}}
    async with aiohttp.ClientSession() as s, s.post(running.url + "/responses", json=payload,
                                                    headers=bearer(DEMO)) as r:
        await r.content.readuntil(b"response.output_text.delta")
    for _ in range(100):
        rows = await ledger(running)
        if rows:
            break
        await asyncio.sleep(0.02)
    [row] = rows
    assert row["client_gone"] == 1 and row["estimated"] == 0 and row["completion"] == 40
    assert row["cost"] == row["prompt"] + 80 and await spent(running) == row["cost"]


async def test_tools_pass_through(client):
    r = await client.responses.create(model="up", input="weather?", tools=TOOLS, extra_body={"mock": {"tool": True}})
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and orjson.loads(call.arguments)


async def test_stored_responses_are_read_and_deleted_by_their_own_account_only(running, client):
    r = await client.responses.create(model="up", input="remember me")
    got = await client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    async with openai.AsyncOpenAI(base_url=running.url, api_key=OTHER, max_retries=0) as other:
        with pytest.raises(openai.NotFoundError) as exc:
            await other.responses.retrieve(r.id)
        assert exc.value.body["code"] == "response_not_found"
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(r.id)
    await client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_never_made")
    async with aiohttp.ClientSession() as s, s.get(running.url + "/responses/" + r.id) as resp:
        assert resp.status == 401
    # Reading and deleting cost nothing: one ledger row, the creation's.
    assert [row["endpoint"] for row in await ledger(running)] == ["responses"]


async def test_a_stored_response_is_continued_by_its_own_account_only(start_gateway, mock_upstream):
    """``previous_response_id`` hands the upstream the whole stored conversation: a key of
    another account (or no account) continuing it would read it. Refused before any upstream
    is called, with the answer OpenAI gives an id it does not know, so an id another account
    made is not told apart from one never made; the account's other keys may continue it."""
    mate = "sk-test-same-account-03"
    config = biz_config(mock_upstream.url, keys=[{"name": "demo", "key": DEMO, "credits": 5.0, "account": "acme"},
                                                 {"name": "mate", "key": mate, "account": "acme"},
                                                 {"name": "other", "key": OTHER, "credits": 5.0}])
    add_claude(config, mock_upstream.url.removesuffix("/v1"), model="text")
    running = await start_gateway(config)
    stats = mock_upstream.app[STATS_KEY]
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client, \
            openai.AsyncOpenAI(base_url=running.url, api_key=OTHER, max_retries=0) as other, \
            openai.AsyncOpenAI(base_url=running.url, api_key=mate, max_retries=0) as same_account:
        made = await client.responses.create(model="up", input="my secret is 42")
        sent = stats["requests"]
        refusals = []
        for rid, stream in ((made.id, False), (made.id, True), ("resp_never_made", False)):
            with pytest.raises(openai.BadRequestError) as exc:
                await other.responses.create(model="up", input="what is my secret?", previous_response_id=rid,
                                             stream=stream)
            refusals.append(exc.value.body)
        assert stats["requests"] == sent  # the upstream never saw them
        assert [r["code"] for r in refusals] == ["previous_response_not_found"] * 3
        assert [r["param"] for r in refusals] == ["previous_response_id"] * 3
        assert refusals[0]["message"] == f"Previous response with id {made.id!r} not found."
        assert refusals[2]["message"] == "Previous response with id 'resp_never_made' not found."
        again = await client.responses.create(model="up", input="what is my secret?", previous_response_id=made.id)
        assert stats["last_body"]["previous_response_id"] == made.id and again.output_text
        await same_account.responses.create(model="up", input="and now?", previous_response_id=again.id)
        assert stats["requests"] == sent + 2
        with pytest.raises(openai.BadRequestError) as exc:  # its own, but Anthropic keeps no Responses memory
            await client.responses.create(model="claude", input="and now?", previous_response_id=made.id)
        assert exc.value.body["code"] == "unsupported_parameter"
    rows = await ledger(running)
    assert [(r["key"], r["status"], r["cost"]) for r in rows if r["key"] == "cfg_other"] == [
        ("cfg_other", 400, 0)] * 3
    assert await spent(running, OTHER) == 0


class SlowToFinish:
    """A plugin whose ``tollway_finish`` takes a while (a slow store, a busy loop): the client
    has its whole answer before the call is over."""

    @hookimpl
    async def tollway_finish(self, call) -> None:
        if call.endpoint == "responses" and "previous_response_id" not in call.body:
            await asyncio.sleep(1.0)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_response_can_be_continued_as_soon_as_the_client_has_it(start_gateway, mock_upstream, stream):
    """Its owner is remembered when its usage is read, before the answer's last bytes: a
    continuation sent at once is not refused as unknown (it was until the first call ended)."""
    config = biz_config(mock_upstream.url, keys=[{"name": "demo", "key": DEMO, "credits": 5.0}])
    running = await start_gateway(config, plugins=[SlowToFinish()])
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        if stream:
            events = [e async for e in await client.responses.create(model="up", input="hi", stream=True)]
            made_id = events[-1].response.id
        else:
            made_id = (await client.responses.create(model="up", input="hi")).id
    # On a connection of its own (the first one's next request waits for the first call's end).
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        again = await client.responses.create(model="up", input="and then?", previous_response_id=made_id)
    assert again.output_text and mock_upstream.app[STATS_KEY]["last_body"]["previous_response_id"] == made_id


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "up"}, "input"),
    ({"model": "up", "input": 5}, "input"),
    ({"model": "up", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "up", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "up", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "up", "input": "x", "stream": "yes"}, "stream"),
    ({"input": "x"}, "model"),
    ({"model": "up", "conversation": "conv_operators_own"}, "conversation"),
    ({"model": "up", "input": "x", "conversation": {"id": "conv_operators_own"}}, "conversation"),
])
async def test_bad_responses_bodies_name_the_field(running, body, param):
    async with aiohttp.ClientSession() as s, s.post(running.url + "/responses", json=body,
                                                    headers=bearer(DEMO)) as r:
        assert r.status == 400
        assert (await r.json())["error"]["param"] == param


async def test_a_conversation_id_is_refused_before_any_upstream_call(running, mock_upstream):
    """Conversations are made upstream under the operator's account (the gateway serves no
    /v1/conversations): a caller naming one could read a conversation it does not own."""
    stats = mock_upstream.app[STATS_KEY]
    sent = stats["requests"]
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as exc:
            await c.responses.create(model="up", input="what did we say?", conversation="conv_operators_own")
    assert exc.value.body["code"] == "unsupported_parameter"
    assert "previous_response_id" in exc.value.body["message"]
    assert stats["requests"] == sent
    assert await spent(running) == 0


async def test_a_refused_responses_call_is_in_the_ledger_and_costs_nothing(running):
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as c:
        with pytest.raises(openai.BadRequestError):
            await c.responses.create(model="up", input="x", extra_body={"mock": {"status": 400}})
    [row] = await ledger(running)
    assert row["status"] == 400 and row["cost"] == 0 and await spent(running) == 0


# -- legacy completions ---------------------------------------------------------------

@pytest.mark.parametrize("model", ["up", "echo"])
async def test_completions_non_stream_and_stream_are_billed(running, client, model):
    r = await client.completions.create(model=model, prompt="def add(a, b):", suffix="\n    return c", max_tokens=50)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens > 0
    told = [micro(r.usage.model_extra["cost"])]
    stream = await client.completions.create(model=model, prompt="def add(a, b):", max_tokens=50, stream=True,
                                             stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    told.append(micro(chunks[-1].usage.model_extra["cost"]))
    stream = await client.completions.create(model=model, prompt="def add(a, b):", max_tokens=50, stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)  # no usage chunk unasked
    rows = await ledger(running)
    assert [row["endpoint"] for row in rows] == ["completions"] * 3
    assert [row["cost"] for row in rows][:2] == told and all(row["cost"] > 0 for row in rows)
    assert all(row["estimated"] == 0 for row in rows)
    assert await spent(running) == sum(row["cost"] for row in rows)


async def test_completions_to_a_non_openai_provider_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        await client.completions.create(model="claude", prompt="x")
    assert exc.value.body["code"] == "completions_not_supported" and "/v1/chat/completions" in exc.value.message


async def test_bad_completions_bodies_name_the_field(running):
    async with aiohttp.ClientSession() as s:
        for body, param in (({"model": "up"}, "prompt"), ({"model": "up", "prompt": "x", "suffix": 3}, "suffix"),
                            ({"model": "up", "prompt": [{}]}, "prompt[0]")):
            async with s.post(running.url + "/completions", json=body, headers=bearer(DEMO)) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == param


# -- count_tokens ---------------------------------------------------------------------

async def test_count_tokens_passes_through_to_anthropic(running, mock_upstream):
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0) as c:
        raw = await c.messages.with_raw_response.count_tokens(
            model="claude", system="be brief", messages=[{"role": "user", "content": "hello there"}])
    counted = await raw.parse()
    sent = orjson.dumps(["be brief", [{"role": "user", "content": "hello there"}], None])
    assert counted.input_tokens == len(sent) // 4
    assert "x-tollway-estimated" not in raw.headers
    assert await spent(running) == 0 and await ledger(running) == []  # counting is free


@pytest.mark.parametrize("model", ["up", "echo"])
async def test_count_tokens_elsewhere_is_an_estimate_and_says_so(running, model):
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0) as c:
        raw = await c.messages.with_raw_response.count_tokens(
            model=model, messages=[{"role": "user", "content": "hello there, how are you today?"}])
    assert raw.headers["x-tollway-estimated"] == "true"
    assert (await raw.parse()).input_tokens == await count_tokens("hello there, how are you today?") + 4


async def test_count_tokens_refusals(running):
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0) as c:
        with pytest.raises(anthropic.NotFoundError):
            await c.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(anthropic.BadRequestError) as exc:
            await c.messages.count_tokens(model="claude", messages=[{"role": "robot", "content": "x"}])
        assert "messages" in exc.value.message
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key="sk-wrong", max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError):
            await c.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "x"}])


def test_stream_text_reads_deltas_and_tool_names():
    blob = (b'event: response.output_item.added\ndata: {"type":"response.output_item.added","item":'
            b'{"type":"function_call","name":"f"}}\n\n'
            b'event: response.function_call_arguments.delta\ndata: {"type":"response.function_call_arguments.delta",'
            b'"delta":"{}"}\n\nevent: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"delta":"hi"}\n\n')
    assert stream_text(blob) == "f{}hi"


async def test_stored_responses_are_found_after_a_restart(start_gateway, mock_upstream, tmp_path):
    config = biz_config(mock_upstream.url, keys=[{"name": "demo", "key": DEMO, "credits": 5.0},
                                                 {"name": "other", "key": OTHER, "credits": 5.0}])
    first = await start_gateway(config)
    async with openai.AsyncOpenAI(base_url=first.url, api_key=DEMO, max_retries=0) as client:
        made = await client.responses.create(model="up", input="remember me across a restart")
    await first.server.close()
    second = await start_gateway(config)
    async with openai.AsyncOpenAI(base_url=second.url, api_key=DEMO, max_retries=0) as client:
        assert (await client.responses.retrieve(made.id)).output_text == made.output_text
    async with openai.AsyncOpenAI(base_url=second.url, api_key=OTHER, max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(made.id)


@pytest.mark.parametrize("knobs", [{"error_after": 7}, {"terminal": "failed", "no_usage": True}])
async def test_an_upstream_error_or_a_failure_without_usage_bills_what_went_out(running, client, knobs):
    stream = await client.responses.create(model="up", input="hello", stream=True, max_output_tokens=500,
                                           extra_body={"mock": knobs})
    events = [e async for e in stream]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    if "error_after" in knobs:  # the upstream's error, forwarded once, nothing added after it
        assert [e.type for e in events].count("error") == 1 and events[-1].type == "error"
        assert events[-1].code == "server_error"
    else:  # the terminal event, with the gateway's count of what went out
        assert events[-1].type == "response.failed" and events[-1].response.usage.model_extra["estimated"] is True
    [row] = await ledger(running)
    assert row["estimated"] == 1 and row["completion"] == await count_tokens(text) > 0
    assert row["cost"] == row["prompt"] + 2 * row["completion"] and await spent(running) == row["cost"]
    assert row["error_code"] == ("upstream_stream_error" if "error_after" in knobs else None)
    if "error_after" not in knobs:
        assert micro(events[-1].response.usage.model_extra["cost"]) == row["cost"]
