"""Auth: the three ways to send a key, every 401, allowlists, /v1/models, config mistakes."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from business import ADMIN, DEMO, admin, bearer, biz_config, chat

from proxy.config import ConfigError
from proxy.gateway import build_gateway


def two_models(config: dict) -> dict:
    config["models"]["echo2"] = {"provider": "local", "price": {"input": 1.0, "output": 2.0}}
    return config


@pytest.mark.parametrize("how", ["bearer", "x-api-key", "X-API-Key", "query"])
async def test_three_ways_to_send_a_key(start_gateway, how):
    running = await start_gateway(biz_config())
    headers, params = {}, {}
    if how == "bearer":
        headers["Authorization"] = f"Bearer {DEMO}"
    elif how == "query":
        params["api_key"] = DEMO
    else:
        headers[how] = DEMO
    async with aiohttp.ClientSession() as s, s.post(
            running.url + "/chat/completions", params=params, headers=headers,
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200
        assert (await r.json())["choices"][0]["message"]["content"] == "hi"


async def test_openai_sdk_with_a_key(start_gateway, close_at_end):
    running = await start_gateway(biz_config())
    client = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=DEMO))
    answer = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "yo"}])
    assert answer.choices[0].message.content == "yo"
    bad = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key="sk-wrong", max_retries=0))
    with pytest.raises(openai.AuthenticationError) as err:
        await bad.chat.completions.create(model="echo", messages=[{"role": "user", "content": "yo"}])
    assert err.value.status_code == 401
    assert err.value.body["code"] == "invalid_api_key"


@pytest.mark.parametrize("key,code", [(None, "missing_api_key"), ("sk-nope", "invalid_api_key"),
                                      ("", "missing_api_key")])
async def test_missing_or_unknown_key_is_401(start_gateway, key, code):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, None, headers={"Authorization": f"Bearer {key}"} if key else {})
    assert status == 401
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_expired_and_disabled_keys_are_401(start_gateway):
    keys = [{"name": "old", "key": "sk-old-key-000000", "credits": 1, "expires_at": "2000-01-01T00:00:00Z"},
            {"name": "off", "key": "sk-off-key-000000", "credits": 1, "disabled": True},
            {"name": "later", "key": "sk-later-key-0000", "credits": 1, "expires_at": "2999-01-01"}]
    running = await start_gateway(biz_config(keys=keys))
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, "sk-old-key-000000")
        assert (status, body["error"]["code"]) == (401, "expired_api_key")
        assert "2000-01-01T00:00:00Z" in body["error"]["message"]
        status, _, body = await chat(s, running, "sk-off-key-000000")
        assert (status, body["error"]["code"]) == (401, "disabled_api_key")
        status, _, _ = await chat(s, running, "sk-later-key-0000")
        assert status == 200


async def test_revocation_takes_effect_on_the_next_request(start_gateway):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        status, made = await admin(s, running, "POST", "/admin/keys", {"name": "temp", "credits": 1})
        assert status == 201
        assert (await chat(s, running, made["key"]))[0] == 200
        status, body = await admin(s, running, "DELETE", f"/admin/keys/{made['id']}")
        assert status == 200 and body["revoked"] is True and body["status"] == "revoked"
        status, _, body = await chat(s, running, made["key"])
        assert (status, body["error"]["code"]) == (401, "revoked_api_key")


async def test_disabling_and_enabling_a_key(start_gateway):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        _, made = await admin(s, running, "POST", "/admin/keys", {"name": "t", "credits": 1})
        await admin(s, running, "PATCH", f"/admin/keys/{made['id']}", {"disabled": True})
        assert (await chat(s, running, made["key"]))[0] == 401
        await admin(s, running, "PATCH", f"/admin/keys/{made['id']}", {"disabled": False})
        assert (await chat(s, running, made["key"]))[0] == 200


async def test_model_allowlist_is_403_and_filters_models(start_gateway, close_at_end):
    keys = [{"name": "narrow", "key": "sk-narrow-000000", "credits": 1, "models": ["echo"]},
            {"name": "wide", "key": "sk-wide-00000000", "credits": 1}]
    running = await start_gateway(two_models(biz_config(keys=keys)))
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, "sk-narrow-000000", model="echo2")
        assert status == 403
        assert body["error"] == {"message": body["error"]["message"], "type": "permission_error",
                                 "param": "model", "code": "model_not_allowed"}
        assert "echo2" in body["error"]["message"]
        # A model that does not exist at all is also a 403 for a narrow key: existence is not revealed.
        assert (await chat(s, running, "sk-narrow-000000", model="nope"))[0] == 403
        assert (await chat(s, running, "sk-wide-00000000", model="nope"))[0] == 404
        assert (await chat(s, running, "sk-narrow-000000", model="echo"))[0] == 200
    narrow = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key="sk-narrow-000000"))
    assert [m.id async for m in narrow.models.list()] == ["echo"]
    with pytest.raises(openai.NotFoundError):
        await narrow.models.retrieve("echo2")
    wide = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key="sk-wide-00000000"))
    assert sorted([m.id async for m in wide.models.list()]) == ["echo", "echo2"]
    async with aiohttp.ClientSession() as s, s.get(running.url + "/models") as r:
        assert r.status == 401


async def test_admin_key_is_not_an_api_key(start_gateway):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running, ADMIN))[0] == 401
        async with s.get(running.url + "/credits", headers=bearer("sk-nope")) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("key,message", [
    ({"name": "a", "key": "k1", "models": ["echo", "ecko"]}, "keys[0].models[1]: unknown model 'ecko'"),
    ({"name": "a", "key": "k1", "credits": -1}, "keys[0].credits: must not be negative"),
    ({"name": "a", "key": "k1", "limits": {"rpm": 0}}, "keys[0].limits.rpm: must be at least 1"),
    ({"name": "a", "key": "k1", "limits": {"rmp": 5}}, "keys[0].limits.rmp: unknown key (did you mean 'rpm'?)"),
    ({"name": "a", "key": "k1", "expires_at": "soon"}, "keys[0].expires_at: 'soon' is not an ISO 8601 time"),
    ({"name": "a", "key": "k1", "expires_at": float("inf")}, "keys[0].expires_at: 'inf' is not a time between"),
    ({"name": "a b", "key": "k1"}, "keys[0].name: use 1-64 letters"),
    ({"name": "a", "key": ""}, "keys[0].key: empty"),
])
async def test_key_config_mistakes_name_the_path(tmp_path, key, message):
    config = biz_config(keys=[key])
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db"}
    with pytest.raises(ConfigError) as err:
        gw = build_gateway(config, path=tmp_path / "t.yaml")
        try:
            await gw.start(serving=False)
        finally:
            await gw.close()
    assert message in str(err.value)


async def test_duplicate_key_names_are_refused(tmp_path):
    config = biz_config(keys=[{"name": "a", "key": "k1"}, {"name": "a", "key": "k2"}])
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db"}
    with pytest.raises(ConfigError, match=r"keys\[1\].name: duplicate key name 'a'"):
        build_gateway(config, path=tmp_path / "t.yaml")  # at build time: `tollway check` sees it


@pytest.mark.parametrize("storage,server,message", [
    ({"counters": "memory"}, {"workers": 2}, "server.workers: 2 workers cannot share the in-memory balances"),
    ({"counters": "redis://127.0.0.1:6379/0"}, {"workers": 2}, "server.workers: 2 workers need a store several "
                                                                 "processes can write at once; set storage.url: "
                                                                 "postgresql://"),
    ({"counters": "memcached://127.0.0.1"}, {}, "storage.counters: 'memcached://127.0.0.1' is not a counters URL"),
    ({"counters": "redis://127.0.0.1:6379/0?timeout=x"}, {}, "storage.counters: timeout= must be a number"),
])
async def test_in_memory_state_refuses_several_processes(tmp_path, storage, server, message):
    config = biz_config()
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db", **storage}
    config["server"].update(server)
    with pytest.raises(ConfigError) as err:
        build_gateway(config, path=tmp_path / "t.yaml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


async def test_anthropic_clients_send_x_api_key(start_gateway, close_at_end):
    import anthropic

    running = await start_gateway(biz_config())
    client = close_at_end(anthropic.AsyncAnthropic(base_url=running.root, api_key=DEMO, max_retries=0))
    answer = await client.messages.create(model="echo", max_tokens=50,
                                          messages=[{"role": "user", "content": "bonjour"}])
    assert answer.content[0].text == "bonjour"
    bad = close_at_end(anthropic.AsyncAnthropic(base_url=running.root, api_key="sk-nope", max_retries=0))
    with pytest.raises(anthropic.AuthenticationError) as err:
        await bad.messages.create(model="echo", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 401
