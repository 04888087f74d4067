"""The operator's own face: the format of the keys it hands out, a public model list,
the dashboard under the base path."""

from __future__ import annotations

import re

import aiohttp
import openai
import pytest
from business import DEMO, admin, bearer, biz_config

from proxy.gateway import build_gateway
from proxy.schema import ConfigError


async def test_keys_follow_the_configured_format(start_gateway, close_at_end):
    config = biz_config(auth={"key_format": {"prefix": "sk-", "length": 64, "alphabet": "hex"}})
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, made = await admin(s, running, "POST", "/admin/keys", json={"name": "fmt", "credits": 1})
    assert status == 201 and re.fullmatch(r"sk-[0-9a-f]{64}", made["key"])
    sdk = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=made["key"], max_retries=0))
    answer = await sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content


@pytest.mark.parametrize(("fmt", "message"), [
    ({"length": 20, "alphabet": "hex"}, "20 hex characters carry 80 random bits; a key needs at least 128 "
                                        r"\(use 32 or more\)"),
    ({"prefix": "sk live"}, "plugins.auth.key_format.prefix"),
    ({"alphabet": "emoji"}, "plugins.auth.key_format.alphabet"),
])
def test_key_format_mistakes(tmp_path, fmt, message):
    config = biz_config(auth={"key_format": fmt})
    config["storage"] = {"url": f"sqlite:///{tmp_path}/t.db"}
    with pytest.raises(ConfigError, match=message):
        build_gateway(config, path=tmp_path / "tollway.yaml")


async def test_the_model_list_may_be_public(start_gateway):
    config = biz_config(keys=[{"name": "narrow", "key": DEMO, "credits": 1, "models": ["echo"]}])
    config["models"]["other"] = {"provider": "local", "price": {"input": 1, "output": 1}}
    config["server"]["base_path"] = "/api"
    closed = await start_gateway(config)
    async with aiohttp.ClientSession() as s, s.get(closed.url + "/models") as r:
        assert r.status == 401
    config["catalog"] = {"public": True}
    config["storage"] = {"url": "sqlite:///" + str(closed.gw.config.base_dir / "public.db")}
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/models", "/api/models"):
            async with s.get(running.root + path) as r:
                assert r.status == 200 and [m["id"] for m in (await r.json())["data"]] == ["echo", "other"]
        async with s.get(running.url + "/models/other") as r:
            assert r.status == 200
        async with s.get(running.url + "/models", headers=bearer(DEMO)) as r:  # a key still narrows it
            assert [m["id"] for m in (await r.json())["data"]] == ["echo"]
        async with s.get(running.url + "/models", headers=bearer("sk-wrong")) as r:
            assert r.status == 401
        async with s.post(running.url + "/chat/completions",
                          json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 401  # only the list is public


async def test_the_dashboard_follows_the_base_path(start_gateway):
    config = biz_config(enabled=["auth", "ratelimit", "quotas", "pricing", "ledger", "dashboard"])
    config["server"]["base_path"] = "/api/v1"
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s, s.get(running.root + "/api/v1/dashboard/login") as r:
        assert r.status == 200 and 'action="/api/v1/dashboard/login"' in await r.text()
