"""What a client can make the built-in mock provider (the shipped config's ``echo`` model) do: it
answers on the worker's event loop, so its work is bounded.

- Embeddings too large (inputs x dimensions over ``MAX_EMBEDDING_NUMBERS``): a 400 naming
  ``dimensions`` before a number is made, nothing charged. Before, every vector was made in time
  quadratic in ``dimensions``: one request for 200,000 dimensions held the whole worker for ~16 s
  (every other request waited), a million for minutes.
- The echo is cut at ``MAX_REPLY_WORDS`` words (finish_reason "length"), as a model's output cap.
  Before, a 2 MB prompt of a million words streamed back a word an event: 224 MB of events built
  on the loop in ~9 s, a 10 MB one a minute and gigabytes."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from business import DEMO, bearer, biz_config, credits

from plugins.providers.mock import MAX_EMBEDDING_NUMBERS, MAX_REPLY_WORDS


@pytest.fixture
async def running(start_gateway, mock_upstream):
    return await start_gateway(biz_config(mock_upstream.url))


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "dimensions": 200_000}, "dimensions"),
    ({"input": ["x"] * 64, "dimensions": MAX_EMBEDDING_NUMBERS // 64 + 1}, "dimensions"),
    ({"input": ["x"] * (MAX_EMBEDDING_NUMBERS // 16 + 1)}, "dimensions"),  # at the mock's 16 dimensions
])
async def test_an_embedding_too_large_for_the_mock_is_a_400(running, body, param):
    async with aiohttp.ClientSession() as s:
        before = await credits(s, running, DEMO)
        async with s.post(running.url + "/embeddings", headers=bearer(DEMO), json={"model": "echo", **body}) as r:
            answer = await r.json()
        assert (r.status, answer["error"]["param"]) == (400, param), answer
        assert await credits(s, running, DEMO) == before
        # the largest the mock makes is served
        async with s.post(running.url + "/embeddings", headers=bearer(DEMO), json={
                "model": "echo", "input": ["a", "b"], "dimensions": MAX_EMBEDDING_NUMBERS // 2}) as r:
            data = (await r.json())["data"]
        assert r.status == 200 and [len(d["embedding"]) for d in data] == [MAX_EMBEDDING_NUMBERS // 2] * 2


@pytest.mark.parametrize("stream", [False, True])
async def test_the_echo_is_cut_at_its_output_cap(running, stream):
    words = [f"w{i}" for i in range(MAX_REPLY_WORDS + 500)]
    body = {"model": "echo", "messages": [{"role": "user", "content": " ".join(words)}], "stream": stream,
            "stream_options": {"include_usage": True}} if stream else {
        "model": "echo", "messages": [{"role": "user", "content": " ".join(words)}]}
    async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                                                    json=body) as r:
        assert r.status == 200, await r.text()
        raw = await r.read()
    if stream:
        events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        finish = [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1]
        usage = events[-1]["usage"]
    else:
        answer = orjson.loads(raw)
        text, finish, usage = (answer["choices"][0]["message"]["content"], answer["choices"][0]["finish_reason"],
                               answer["usage"])
    assert text.split(" ") == words[:MAX_REPLY_WORDS]
    assert (finish, usage["completion_tokens"]) == ("length", MAX_REPLY_WORDS)
