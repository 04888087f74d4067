"""A request without ``model``: the API key's own default model (admin API, CLI, YAML), else
``server.default_model``, else 400 saying so. A request that names a model is unchanged."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import yaml
from business import ADMIN_HEADERS, bearer, biz_config
from fleet import until
from routing_helpers import MESSAGES
from test_routing_groups import KEY, gateway

from benchmarks.mock_upstream import STATS_KEY
from proxy import ConfigError
from proxy.cli import main
from proxy.gateway import build_gateway


async def no_model(s: aiohttp.ClientSession, running, key: str) -> tuple[int, str | None, dict]:
    """A chat call without "model": (status, x-tollway-model, body)."""
    async with s.post(running.url + "/chat/completions", json={"messages": MESSAGES}, headers=bearer(key)) as r:
        return r.status, r.headers.get("x-tollway-model"), await r.json()


async def test_a_keys_default_model_comes_before_the_servers(start_gateway, aiohttp_server):
    keys = [{"name": "k", "key": KEY, "credits": 10.0, "default_model": "cheap"},
            {"name": "plain", "key": "sk-test-routing-plain", "credits": 10.0}]
    ups, running = await gateway(start_gateway, aiohttp_server, keys=keys, default_model="mid")
    async with aiohttp.ClientSession() as s:
        status, model, answer = await no_model(s, running, KEY)
        assert (status, model, answer["model"]) == (200, "cheap", "cheap-up")
        assert (await no_model(s, running, "sk-test-routing-plain"))[:2] == (200, "mid")  # the server's
        async with s.post(running.url + "/chat/completions", json={"model": "dear", "messages": MESSAGES},
                          headers=bearer(KEY)) as r:
            assert r.status == 200 and r.headers["x-tollway-model"] == "dear"  # named: as named
    assert ups.all_hits() == {"a": 1, "b": 1, "c": 1}
    assert ups.servers["a"].app[STATS_KEY]["last_body"]["model"] == "cheap-up"


async def test_the_admin_api_sets_changes_and_clears_a_keys_default_model(start_gateway, aiohttp_server):
    ups, running = await gateway(start_gateway, aiohttp_server)  # no server.default_model
    async with aiohttp.ClientSession() as s:
        async with s.post(running.root + "/admin/keys", headers=ADMIN_HEADERS,
                          json={"name": "app", "credits": 1.0, "default_model": "mid"}) as r:
            assert r.status == 201
            made = await r.json()
        assert made["default_model"] == "mid"
        assert (await no_model(s, running, made["key"]))[:2] == (200, "mid")
        url = running.root + "/admin/keys/" + made["id"]
        async with s.patch(url, headers=ADMIN_HEADERS, json={"default_model": "dear"}) as r:
            assert r.status == 200 and (await r.json())["default_model"] == "dear"
        assert (await no_model(s, running, made["key"]))[:2] == (200, "dear")
        async with s.patch(url, headers=ADMIN_HEADERS, json={"default_model": "gpt-5"}) as r:
            wrong = await r.json()
            assert r.status == 400 and wrong["error"]["param"] == "default_model", wrong
            assert "unknown model 'gpt-5'" in wrong["error"]["message"]
        async with s.patch(url, headers=ADMIN_HEADERS, json={"default_model": None}) as r:
            assert r.status == 200 and (await r.json())["default_model"] is None
        status, _, answer = await no_model(s, running, made["key"])
    assert status == 400 and answer["error"]["code"] == "missing_model"
    assert answer["error"]["message"] == "'model' is required: the name of a model from GET /v1/models"
    assert ups.all_hits() == {"a": 0, "b": 1, "c": 1}


async def test_the_cli_makes_a_key_with_a_default_model(start_gateway, tmp_path, capsys):
    config = biz_config(keys=[{"name": "k", "key": KEY, "credits": 10.0}])
    config["models"]["dear"] = {"provider": "local", "price": {"input": 1, "output": 1}}
    config["storage"] = {"url": f"sqlite:///{tmp_path}/cli.db"}
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    code = await asyncio.to_thread(main, ["keys", "create", "--config", str(path), "--name", "app",
                                          "--credits", "1", "--default-model", "dear"])
    out = capsys.readouterr().out
    assert code == 0 and "default  dear" in out
    plain = out.split("key: ")[1].split()[0]
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, model, answer = await no_model(s, running, plain)
    assert (status, model) == (200, "dear"), answer
    assert await asyncio.to_thread(main, ["keys", "create", "--config", str(path), "--name", "x",
                                          "--default-model", "gpt-5"]) == 2
    assert "default_model: unknown model 'gpt-5'" in capsys.readouterr().err


def test_an_unknown_default_model_of_a_yaml_key_is_named():
    config = biz_config(keys=[{"name": "k", "key": KEY, "credits": 1.0, "default_model": "ehco"}])
    with pytest.raises(ConfigError, match=r"keys\[0\].default_model: unknown model 'ehco' \(did you mean 'echo'\?\)"):
        build_gateway(config)


async def test_the_cli_changes_and_clears_a_keys_default_model_on_a_running_server(start_gateway, tmp_path, capsys):
    config = biz_config(keys=[{"name": "k", "key": KEY, "credits": 10.0}], auth={"poll_ms": 20})
    config["models"]["dear"] = {"provider": "local", "price": {"input": 1, "output": 1}}
    config["storage"] = {"url": f"sqlite:///{tmp_path}/cli.db"}
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config))

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, [*argv[:2], "--config", str(path), *argv[2:]])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = await cli("keys", "create", "--name", "app", "--credits", "1")
    assert code == 0 and "default  none (server.default_model)" in out
    plain = out.split("key: ")[1].split()[0]
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        assert (await no_model(s, running, plain))[0] == 400  # no default anywhere yet
        code, out, _ = await cli("keys", "update", "app", "--default-model", "dear")
        assert code == 0 and "default  dear" in out
        await until(lambda: _served_by(s, running, plain, "dear"), what="the server to take the new default")
        code, _, err = await cli("keys", "update", "app", "--default-model", "deer")
        assert code == 2 and "tollway keys update: default_model: unknown model 'deer' (did you mean 'dear'?)" in err
        assert await _served_by(s, running, plain, "dear")  # unchanged by the refused update
        code, out, _ = await cli("keys", "update", "app", "--no-default-model")
        assert code == 0 and "default  none (server.default_model)" in out
        await until(lambda: _refused_for_no_model(s, running, plain), what="the server to drop the default")
    code, _, err = await cli("keys", "update", "k", "--default-model", "dear")
    assert code == 1 and "is defined in the config file's keys: list; change it there" in err
    with pytest.raises(SystemExit) as exited:  # one of the two is required
        main(["keys", "update", "--config", str(path), "app"])
    assert exited.value.code == 2
    assert "one of the arguments --default-model --no-default-model is required" in capsys.readouterr().err


async def _served_by(s: aiohttp.ClientSession, running, key: str, model: str) -> bool:
    return (await no_model(s, running, key))[:2] == (200, model)


async def _refused_for_no_model(s: aiohttp.ClientSession, running, key: str) -> bool:
    status, _, answer = await no_model(s, running, key)
    return status == 400 and answer["error"]["code"] == "missing_model"
