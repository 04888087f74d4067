"""Retries and fallbacks: only before the first byte, only for unbilled failures, billed once."""

from __future__ import annotations

import aiohttp
import anthropic
import openai
import pytest
from business import ALL, DEMO, bearer, biz_config, credits
from routing_helpers import ask, deployments, make_upstreams, routing_config

from plugins.accounts import ACCOUNTS

PRICE = {"input": 1.0, "output": 2.0}


async def ledger(running) -> list[tuple]:
    await running.gw.services.get(ACCOUNTS).writer.flush()
    return await running.gw.store.fetchall(
        "select status, served_model, provider, cost_micro_usd, error_code from tollway_ledger order by time, id")


def business(ups, models, routing=None) -> dict:
    config = routing_config(ups, models, routing)
    biz = biz_config(enabled=ALL)
    biz["providers"].update(config["providers"])
    biz["models"].update(config["models"])
    biz["routing"] = config["routing"]
    return biz


@pytest.mark.parametrize("status", [429, 503, 500])
async def test_an_unbilled_failure_is_retried_elsewhere_and_billed_once(start_gateway, aiohttp_server, status):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.fail("a", status)
    deps = deployments(("a", 1000), ("b", 0.001))  # a first, nearly always
    running = await start_gateway(business(ups, {"m": {"deployments": deps, "price": PRICE}}))
    async with aiohttp.ClientSession() as s:
        before = (await credits(s, running, DEMO))["balance_micro_usd"]
        status_got, headers, body = await ask(s, running, headers=bearer(DEMO))
        after = (await credits(s, running, DEMO))["balance_micro_usd"]
    assert status_got == 200 and headers["x-tollway-attempts"] == "2" and headers["x-tollway-provider"] == "b"
    assert ups.all_hits() == {"a": 1, "b": 1}
    cost = body["usage"]["cost"]
    assert cost > 0 and headers["x-tollway-cost"] == f"{cost:.6f}"
    rows = await ledger(running)
    assert rows == [(200, "m", "b", round(cost * 1e6), None)]  # one row, one charge
    assert before - after == round(cost * 1e6)


@pytest.mark.parametrize("status, client_status", [(400, 400), (413, 413)])
async def test_the_clients_own_errors_are_not_retried(start_gateway, aiohttp_server, status, client_status):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.fail("a", status)
    running = await start_gateway(routing_config(ups, {"m": {"deployments": deployments(("a", 1000), ("b", 0.001)),
                                                             "price": PRICE}}))
    async with aiohttp.ClientSession() as s:
        got, headers, _ = await ask(s, running)
    assert got == client_status and headers["x-tollway-attempts"] == "1"
    assert ups.all_hits() == {"a": 1, "b": 0}


async def test_an_unauthenticated_request_reaches_no_upstream(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    running = await start_gateway(business(ups, {"m": {"deployments": deployments("a", "b"), "price": PRICE}}))
    async with aiohttp.ClientSession() as s:
        assert (await ask(s, running))[0] == 401
    assert ups.all_hits() == {"a": 0, "b": 0}


async def test_no_retry_after_the_first_streamed_byte(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.force("a", drop_after=3)  # role chunk and two content chunks, then the connection drops
    deps = deployments(("a", 1000), ("b", 0.001))
    running = await start_gateway(business(ups, {"m": {"deployments": deps, "price": PRICE}}))
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True)
        text = ""
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
    assert text  # some output went out before the cut
    assert ups.all_hits() == {"a": 1, "b": 0}
    [(status, served, provider, cost, error)] = await ledger(running)
    assert (status, served, provider) == (200, "m", "a")
    assert cost > 0 and error == "upstream_disconnected"  # the output that went out is billed


async def test_fallback_model_after_every_deployment_failed_stream_and_not_with_both_sdks(start_gateway,
                                                                                          aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b", "c")
    ups.fail("a", 503)
    ups.fail("b", 503)
    models = {"m": {"deployments": deployments("a", "b"), "fallbacks": ["spare"], "price": PRICE},
              "spare": {"provider": "c", "model": "c-model", "price": {"input": 3.0, "output": 4.0}}}
    running = await start_gateway(business(ups, models))
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-tollway-model"] == "spare" and raw.headers["x-tollway-attempts"] == "3"
        assert raw.parse().choices[0].message.content
        stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert chunks[-1].usage.completion_tokens > 0
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0) as client:
        message = await client.messages.create(model="m", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].text
    rows = await ledger(running)
    assert [(r[0], r[1], r[2]) for r in rows] == [(200, "spare", "c")] * 3
    assert ups.hits("c") == 3


async def test_retries_are_bounded(start_gateway, aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b", "c", "d")
    for name in "abcd":
        ups.fail(name, 503)
    running = await start_gateway(routing_config(ups, {"m": {"deployments": deployments("a", "b", "c", "d"),
                                                             "price": PRICE}}, {"retries": 2}))
    async with aiohttp.ClientSession() as s:
        status, headers, body = await ask(s, running)
    assert status == 503 and body["error"]["code"] == "upstream_overloaded"
    assert headers["x-tollway-attempts"] == "3" and sum(ups.all_hits().values()) == 3


async def test_a_first_byte_timeout_is_retried_only_when_configured(start_gateway, aiohttp_server, tmp_path):
    ups = await make_upstreams(aiohttp_server, "a", "b")
    ups.force("a", delay=3)
    models = {"m": {"deployments": deployments(("a", 1000), ("b", 0.001)), "price": PRICE}}
    config = routing_config(ups, models)
    config["providers"]["a"]["timeouts"]["first_byte"] = 0.2
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, _, body = await ask(s, running)
        assert status == 504 and body["error"]["code"] == "upstream_timeout_first_byte"
    config["routing"]["retry_timeouts"] = True
    config["storage"] = {"url": "sqlite:///" + str(tmp_path / "second.db")}
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await ask(s, running)
    assert status == 200 and headers["x-tollway-provider"] == "b"
