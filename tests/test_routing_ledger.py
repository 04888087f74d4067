"""Every attempt is in the ledger row (attempts, the deployments tried), and an answer cut
after it began is marked incomplete and billed for what went out."""

from __future__ import annotations

import aiohttp
import openai
import orjson
import pytest
from business import DEMO, bearer, credits
from routing_helpers import ask, deployments, make_upstreams
from test_routing_retries import business

from plugins.accounts import ACCOUNTS
from plugins.accounts.tokens import count_tokens

PRICE = {"input": 1.0, "output": 2.0}
COLUMNS = ("status", "served_model", "provider", "attempts", "deployments", "incomplete", "error_code", "estimated",
           "prompt_tokens", "completion_tokens", "cost_micro_usd")


async def rows(running) -> list[dict]:
    await running.gw.services.get(ACCOUNTS).writer.flush()
    got = await running.gw.store.fetchall(f"select {', '.join(COLUMNS)} from tollway_ledger order by time, id")
    return [dict(zip(COLUMNS, row, strict=True)) for row in got]


async def test_the_row_lists_every_deployment_tried_in_order(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b", "c")
    ups.fail("a", 503)
    ups.fail("b", 429)
    models = {"m": {"deployments": deployments(("a", 1000), ("b", 1)), "fallbacks": ["spare"], "price": PRICE},
              "spare": {"provider": "c", "model": "c-model", "price": PRICE}}
    running = await start_gateway(business(ups, models))
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await ask(s, running, headers=bearer(DEMO))
        assert status == 200 and headers["x-tollway-attempts"] == "3"
        ups.recover("a")
        ups.recover("b")
        status, headers, _ = await ask(s, running, "spare", headers=bearer(DEMO))
        assert status == 200 and headers["x-tollway-attempts"] == "1"
    served, single = await rows(running)
    assert (served["status"], served["served_model"], served["provider"], served["attempts"], served["incomplete"]) \
        == (200, "spare", "c", 3, 0)
    tried = orjson.loads(served["deployments"])
    # a nearly always first; b after it (a 429, not billed), then the fallback
    assert tried in (["a/a-model", "b/b-model", "c/c-model"], ["b/b-model", "a/a-model", "c/c-model"])
    assert (single["attempts"], orjson.loads(single["deployments"]), single["incomplete"]) == (1, ["c/c-model"], 0)


async def test_a_request_that_reached_no_upstream_has_no_attempts(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a")
    running = await start_gateway(business(ups, {"m": {"deployments": deployments("a"), "price": PRICE}}))
    async with aiohttp.ClientSession() as s:
        status, _, _ = await ask(s, running, headers=bearer(DEMO), max_tokens=10**9)  # more than $5 can hold
    assert status == 402
    [row] = await rows(running)
    assert (row["attempts"], row["deployments"], row["incomplete"]) == (0, None, 0)
    assert ups.hits("a") == 0


@pytest.mark.parametrize("usage", [False, True], ids=["no-usage-asked", "usage-asked"])
async def test_a_deployment_that_dies_mid_stream_is_marked_incomplete_and_billed_for_what_went_out(
        start_gateway, aiohttp_server, usage):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.force("a", drop_after=3)  # the role chunk and two content chunks, then the connection drops
    running = await start_gateway(business(ups, {"m": {"deployments": deployments(("a", 1000), ("b", 0.001)),
                                                       "price": PRICE}}))
    async with aiohttp.ClientSession() as s:
        before = (await credits(s, running, DEMO))["balance_micro_usd"]
    extra = {"stream_options": {"include_usage": True}} if usage else {}
    text = ""
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True, **extra)
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
    assert text == "tok0 toktok1 tok"  # two chunks went out, then the cut
    async with aiohttp.ClientSession() as s:
        after = (await credits(s, running, DEMO))["balance_micro_usd"]
    [row] = await rows(running)
    assert ups.all_hits() == {"a": 1, "b": 0}  # no retry after the first byte
    assert (row["status"], row["provider"], row["attempts"], orjson.loads(row["deployments"]), row["incomplete"],
            row["error_code"], row["estimated"]) == (200, "a", 1, ["a/a-model"], 1, "upstream_disconnected", 1)
    assert row["completion_tokens"] == await count_tokens(text)  # what went out, counted
    assert row["cost_micro_usd"] == row["prompt_tokens"] * 1 + row["completion_tokens"] * 2
    assert before - after == row["cost_micro_usd"] > 0
