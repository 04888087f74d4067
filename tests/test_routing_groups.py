"""Groups, ``auto``, the client's own ``models`` list and ``server.default_model``."""

from __future__ import annotations

import aiohttp
import anthropic
import openai
import orjson
import pytest
from business import ALL, bearer, biz_config
from routing_helpers import ask, make_upstreams, routing_config

from benchmarks.mock_upstream import STATS_KEY
from plugins.accounts import ACCOUNTS
from proxy import ConfigError
from proxy.gateway import build_gateway

KEY = "sk-test-routing-key-01"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


def models() -> dict:
    return {
        "cheap": {"provider": "a", "model": "cheap-up", "price": {"input": 0.1, "output": 0.2}, "context_window": 2000},
        "mid": {"provider": "b", "model": "mid-up", "price": {"input": 1, "output": 2}, "context_window": 100000,
                "capabilities": ["tools", "json", "stream"]},
        "dear": {"provider": "c", "model": "dear-up", "price": {"input": 10, "output": 20}, "context_window": 200000,
                 "capabilities": ["tools", "vision", "json", "stream"]},
        "smart": {"group": ["mid", "dear"]},
        "auto": {"auto": "cheapest"},
    }


async def gateway(start_gateway, aiohttp_server, keys=None, **server):
    ups = await make_upstreams(aiohttp_server, "a", "b", "c")
    config = routing_config(ups, models())
    biz = biz_config(enabled=ALL, keys=keys or [{"name": "k", "key": KEY, "credits": 10.0}])
    biz["providers"].update(config["providers"])
    biz["models"] = config["models"]
    del biz["models"]["echo"]
    biz["routing"] = config["routing"]
    biz["server"].update(server)
    return ups, await start_gateway(biz)


async def served(s, running, key=KEY, **body) -> tuple[int, str | None, dict]:
    status, headers, answer = await ask(s, running, headers=bearer(key), **body)
    return status, headers.get("x-tollway-model"), answer


async def test_auto_picks_the_cheapest_model_that_fits_and_bills_its_price(start_gateway, aiohttp_server):
    ups, running = await gateway(start_gateway, aiohttp_server)
    async with aiohttp.ClientSession() as s:
        status, model, answer = await served(s, running, model="auto")
        assert (status, model) == (200, "cheap")
        assert answer["model"] == "cheap-up"
        cheap_cost = answer["usage"]["cost"]
        assert cheap_cost == round((answer["usage"]["prompt_tokens"] * 0.1
                                    + answer["usage"]["completion_tokens"] * 0.2) / 1e6, 6)
        assert (await served(s, running, model="auto", tools=TOOLS))[1] == "mid"  # cheap lacks tools
        long = [{"role": "user", "content": "word " * 1000}]  # with the 1024 default cap, beyond cheap's 2000
        assert (await served(s, running, model="auto", messages=long))[1] == "mid"
        image = [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}]
        assert (await served(s, running, model="auto", messages=image))[1] == "dear"  # only dear sees
        assert (await served(s, running, model="auto", max_tokens=5000))[1] == "mid"  # the cap counts too
    await running.gw.services.get(ACCOUNTS).writer.flush()
    rows = await running.gw.store.fetchall("select model, served_model from tollway_ledger order by time, id")
    assert rows == [("auto", "cheap"), ("auto", "mid"), ("auto", "mid"), ("auto", "dear"), ("auto", "mid")]


async def test_auto_fails_over_to_the_next_cheapest(start_gateway, aiohttp_server):
    ups, running = await gateway(start_gateway, aiohttp_server)
    ups.fail("a", 503)
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await ask(s, running, model="auto", headers=bearer(KEY))
    assert status == 200 and headers["x-tollway-model"] == "mid" and headers["x-tollway-attempts"] == "2"


async def test_auto_chooses_among_the_keys_models_only_and_says_why_nothing_fits(start_gateway, aiohttp_server):
    keys = [{"name": "k", "key": KEY, "credits": 10.0, "models": ["auto", "cheap", "mid"]}]
    ups, running = await gateway(start_gateway, aiohttp_server, keys=keys)
    image = [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}]
    async with aiohttp.ClientSession() as s:
        status, _, answer = await served(s, running, model="auto", messages=image)
        assert status == 400 and answer["error"]["code"] == "no_model_fits"
        assert "cheap lacks vision" in answer["error"]["message"] and "dear" not in answer["error"]["message"]
        assert (await served(s, running, model="dear"))[0] == 403
    assert ups.all_hits() == {"a": 0, "b": 0, "c": 0}


async def test_a_group_fails_over_stream_and_not_with_both_sdks(start_gateway, aiohttp_server):
    ups, running = await gateway(start_gateway, aiohttp_server)
    ups.fail("b", 503)
    async with openai.AsyncOpenAI(base_url=running.url, api_key=KEY, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="smart", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-tollway-model"] == "dear" and raw.parse().model == "dear-up"
        stream = await client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    async with anthropic.AsyncAnthropic(base_url=running.root, api_key=KEY, max_retries=0) as client:
        message = await client.messages.create(model="smart", max_tokens=50,
                                               messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].text
        async with client.messages.stream(model="smart", max_tokens=50,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            assert await stream.get_final_text()
    assert ups.hits("b") == 4 and ups.hits("c") == 4


async def test_the_models_list_shows_groups_and_auto_with_a_price_range_and_no_provider(start_gateway,
                                                                                       aiohttp_server):
    ups, running = await gateway(start_gateway, aiohttp_server)
    async with openai.AsyncOpenAI(base_url=running.url, api_key=KEY, max_retries=0) as client:
        listed = {m.id: m.model_dump() for m in (await client.models.list()).data}
    smart, auto = listed["smart"], listed["auto"]
    assert smart["owned_by"] == auto["owned_by"] == "tollway"
    assert smart["pricing"]["input"] == 1 and smart["pricing"]["max"]["input"] == 10
    assert auto["pricing"]["output"] == 0.2 and auto["pricing"]["max"]["output"] == 20
    assert smart["context_window"] == 200000
    assert listed["mid"]["owned_by"] == "openai-compatible" and "max" not in listed["mid"]["pricing"]


async def test_the_clients_own_models_list_is_its_fallback_order(start_gateway, aiohttp_server):
    keys = [{"name": "k", "key": KEY, "credits": 10.0, "models": ["cheap", "mid"]}]
    ups, running = await gateway(start_gateway, aiohttp_server, keys=keys)
    ups.fail("a", 503)
    async with aiohttp.ClientSession() as s:
        status, model, _ = await served(s, running, model="cheap", models=["mid"])
        assert (status, model) == (200, "mid")
        assert "models" not in ups.servers["b"].app[STATS_KEY]["last_body"]  # not an upstream field
        status, _, answer = await served(s, running, model="cheap", models=["dear"])
        assert status == 403 and answer["error"]["param"] == "models"
        status, _, answer = await served(s, running, model="cheap", models=["ghost"])
        assert status == 400 and answer["error"]["code"] == "model_not_found"


async def test_a_request_without_a_model_uses_the_default_model(start_gateway, aiohttp_server):
    ups, running = await gateway(start_gateway, aiohttp_server, default_model="mid")
    async with aiohttp.ClientSession() as s:
        payload = {"messages": [{"role": "user", "content": "hi"}]}
        async with s.post(running.url + "/chat/completions", json=payload, headers=bearer(KEY)) as r:
            assert r.status == 200 and r.headers["x-tollway-model"] == "mid"
            assert orjson.loads(await r.read())["model"] == "mid-up"
    assert ups.hits("b") == 1


@pytest.mark.parametrize("change, message", [
    ({"smart": {"group": ["mid", "ghost"]}}, "models.smart.group[1]: unknown model 'ghost'"),
    ({"smart": {"group": ["mid", "auto"]}}, "models.smart.group[1]: 'auto' is a group or auto itself"),
    ({"smart": {"group": ["mid"], "price": {"input": 1, "output": 1}}}, "models.smart.price: a group has none"),
    ({"auto": {"auto": "fastest"}}, "models.auto.auto: expected one of 'cheapest'"),
    ({"mid": {"provider": "b", "price": {"input": 1, "output": 1}, "capabilities": ["tool"]}},
     "models.mid.capabilities[0]: unknown capability 'tool' (did you mean 'tools'?)"),
    ({"mid": {"provider": "b"}}, "models.mid.price: required"),
])
async def test_group_and_auto_mistakes_are_named(aiohttp_server, change, message):
    ups = await make_upstreams(aiohttp_server, "a", "b", "c")
    config = routing_config(ups, {**models(), **change})
    with pytest.raises(ConfigError) as exc:
        build_gateway(config)
    assert str(exc.value).startswith(message)


async def test_an_unknown_default_model_is_named(aiohttp_server):
    ups = await make_upstreams(aiohttp_server, "a", "b", "c")
    config = routing_config(ups, models())
    config["server"]["default_model"] = "gpt-5"
    with pytest.raises(ConfigError, match="server.default_model: unknown model 'gpt-5'"):
        build_gateway(config)
