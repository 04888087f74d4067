"""Every answer of a model route names its request: ``x-tollway-request-id`` is the id of
the request's ledger row, so a client (or an operator it writes to) finds the row of any
answer: a success, a stream (in its headers, before a byte of the body), a refusal (402,
404, 429, a body refused before any hook), an upstream error. A 401 carries one too, and
has no row (the ledger does not record unauthenticated requests). Without the ledger
plugin the header is still sent (the id names the request, in no table). Through the
real server with the official SDKs and raw HTTP."""

from __future__ import annotations

import aiohttp
import anthropic
import openai
import pytest
from business import DEMO, bearer, biz_config, ledger_rows, wav

HEADER = "x-tollway-request-id"
POOR = "sk-test-poor-key-0001"


@pytest.fixture
async def running(start_gateway, mock_upstream):
    config = biz_config(mock_upstream.url, keys=[
        {"name": "demo", "key": DEMO, "credits": 5.0, "limits": {"rpm": 6}},
        {"name": "poor", "key": POOR, "credits": 0.000001}])
    config["models"]["whisper"] = {"provider": "local", "price": {"input": 0, "output": 0, "audio_minute": 0.006}}
    return await start_gateway(config)


async def rows(running) -> dict[str, dict]:
    return {r["id"]: r for r in await ledger_rows(running, "id", "endpoint", "status", "error_code", "cost",
                                                    "stream")}


async def test_every_answer_names_its_ledger_row(running):
    said: list[tuple[str, str, int, bool]] = []  # (id, endpoint, status, stream)
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="echo", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        cost = round(float(raw.headers["x-tollway-cost"]) * 1e6)
        said.append((raw.headers[HEADER], "chat", 200, False))
        async with client.chat.completions.with_streaming_response.create(
                model="up", max_tokens=20, stream=True, messages=[{"role": "user", "content": "hi"}]) as stream:
            said.append((stream.headers[HEADER], "chat", 200, True))  # in the headers, before the body
            assert [line async for line in stream.iter_lines()]
        raw = await client.embeddings.with_raw_response.create(model="echo", input="hello")
        said.append((raw.headers[HEADER], "embeddings", 200, False))
        raw = await client.audio.transcriptions.with_raw_response.create(model="whisper", file=("a.wav", wav(1.0)))
        said.append((raw.headers[HEADER], "transcriptions", 200, False))
        with pytest.raises(openai.NotFoundError) as err:  # refused at resolve, before admission
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        said.append((err.value.response.headers[HEADER], "chat", 404, False))
        with pytest.raises(openai.APIStatusError) as err:  # the mock upstream's own 500, answered 502
            await client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}],
                                                 extra_body={"mock": {"status": 500}})
        said.append((err.value.response.headers[HEADER], "chat", err.value.status_code, False))
        with pytest.raises(openai.RateLimitError) as err:  # rpm 6: the 7th request
            for _ in range(6):
                await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
        said.append((err.value.response.headers[HEADER], "chat", 429, False))
    async with openai.AsyncOpenAI(base_url=running.url, api_key=POOR, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
        said.append((err.value.response.headers[HEADER], "chat", 402, False))
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=POOR, max_retries=0) as claude:
        with pytest.raises(anthropic.APIStatusError) as aerr:
            await claude.messages.create(model="echo", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        said.append((aerr.value.response.headers[HEADER], "messages", 402, False))
    async with aiohttp.ClientSession() as s:  # a body refused before any hook runs (not JSON)
        async with s.post(running.url + "/chat/completions", data=b"{nope", headers=bearer(DEMO)) as r:
            said.append((r.headers[HEADER], "chat", r.status, False))
            assert r.status == 400
        async with s.post(running.url + "/chat/completions", headers=bearer("sk-unknown"),
                          json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 401
            unauthenticated = r.headers[HEADER]
    ledger = await rows(running)
    ids = [i for i, *_ in said]
    assert len(set(ids)) == len(ids) and unauthenticated not in ids
    for rid, endpoint, status, stream in said:
        row = ledger[rid]
        assert (row["endpoint"], row["status"], row["stream"]) == (endpoint, status, int(stream)), (rid, row)
    assert ledger[said[0][0]]["cost"] == cost > 0
    assert unauthenticated not in ledger  # a 401 has no row
    told = set(ids)
    # The rest: the loop's one success before the 429 (rpm 6: five admitted before it), its own row.
    assert [(r["endpoint"], r["status"]) for r in ledger.values() if r["id"] not in told] == [("chat", 200)]


async def test_without_the_ledger_the_header_still_names_the_request(start_gateway):
    running = await start_gateway(biz_config(enabled=["auth", "pricing"]))
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        first = await client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "hi"}])
        second = await client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "hi"}])
    ids = first.headers[HEADER], second.headers[HEADER]
    assert ids[0] != ids[1] and all(len(i) == 26 for i in ids)
