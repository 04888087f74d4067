"""The public model catalog (AICredits' GET /api/models): no key, when the operator
turns it on; AICredits' field names; the family, never the operator's provider name;
GET /v1/models/{id} shows the same fields."""

from __future__ import annotations

import aiohttp
import pytest
from business import DEMO, bearer, biz_config


def config(upstream: str, public: bool | None) -> dict:
    cfg = biz_config(upstream)
    cfg["providers"]["my-secret-anthropic"] = {"kind": "anthropic", "base_url": upstream, "api_key": "x"}
    cfg["models"]["claude"] = {"provider": "my-secret-anthropic", "model": "claude-sonnet-4-5",
                               "price": {"input": 3.0, "output": 15.0}, "context_window": 200000}
    cfg["models"]["gpt"] = {"provider": "up", "model": "gpt-4o-mini", "price": {"input": 0.15, "output": 0.6}}
    cfg["models"]["img"] = {"provider": "up", "model": "dall-e-3",
                            "price": {"input": 0, "output": 0, "images": {"1024x1024/standard": 0.04}}}
    if public is not None:
        cfg["catalog"] = {"public": public}
    return cfg


async def test_the_public_catalog_needs_no_key_and_hides_provider_names(start_gateway, mock_upstream):
    running = await start_gateway(config(mock_upstream.url, True))
    async with aiohttp.ClientSession() as s:
        async with s.get(running.root + "/api/models") as r:
            assert r.status == 200
            models = {m["id"]: m for m in (await r.json())["data"]}
        async with s.get(running.url + "/models/claude", headers=bearer(DEMO)) as r:
            one = await r.json()
    assert models["claude"]["provider"] == "anthropic" and models["gpt"]["provider"] == "openai"
    assert models["echo"]["provider"] == "tollway-mock" and models["up"]["provider"] == "openai-compatible"
    claude = models["claude"]
    assert (claude["name"], claude["context_window"], claude["input_cost_per_1m"], claude["output_cost_per_1m"]) == \
        ("claude", 200000, 3.0, 15.0)
    assert models["img"]["image_cost_per_image"] == {"1024x1024/standard": 0.04}
    assert one == claude
    text = str(models)
    assert "my-secret-anthropic" not in text


@pytest.mark.parametrize("public", [None, False])
async def test_the_catalog_is_off_unless_turned_on(start_gateway, mock_upstream, public):
    running = await start_gateway(config(mock_upstream.url, public))
    async with aiohttp.ClientSession() as s, s.get(running.root + "/api/models") as r:
        assert r.status == 404 and "catalog" in (await r.json())["error"]["message"]
