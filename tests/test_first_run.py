"""What a new user meets first: no noise about plugins the config does not use,
and a provider without its key says so at start and answers 502 at once."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import base_config

from proxy.config import read_yaml

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "cloud", "messages": [{"role": "user", "content": "hi"}]}


def cli_without_numpy(*args: str) -> subprocess.CompletedProcess:
    """``tollway ARGS`` in a process where numpy cannot be imported (a plain ``pip install -e .``)."""
    code = ("import sys; sys.modules['numpy'] = None; from proxy.cli import main; "
            f"sys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_missing_extra_is_silent_unless_the_config_enables_it(tmp_path):
    done = cli_without_numpy("check", "--config", "config/tollway.yaml")
    assert done.returncode == 0, done.stderr
    assert "cannot be loaded" not in done.stderr and "numpy" not in done.stderr
    cfg = tmp_path / "cache.yaml"
    cfg.write_text("providers: {local: {kind: mock}}\n"
                   "models: {echo: {provider: local, price: {input: 0, output: 0}}}\n"
                   "plugins: {enabled: [cache]}\n")
    done = cli_without_numpy("check", "--config", str(cfg))
    assert done.returncode == 2
    assert "plugins.enabled[0]: the built-in plugin 'cache' cannot be loaded" in done.stderr
    assert "numpy" in done.stderr and "Traceback" not in done.stderr


def keyed_config(tmp_path, provider_yaml: str) -> dict:
    path = tmp_path / "keys.yaml"
    path.write_text(f"providers:\n  openai: {provider_yaml}\n")
    raw, _ = read_yaml(path)
    config = base_config()
    config["providers"]["openai"] = raw["providers"]["openai"]
    config["models"]["cloud"] = {"provider": "openai", "price": {"input": 1, "output": 1}}
    return config


@pytest.mark.parametrize("provider_yaml, says", [
    # the shipped config's shape, with OPENAI_API_KEY unset
    ("{kind: openai, base_url: 'https://api.openai.com/v1', api_key: '${TOLLWAY_TEST_UNSET_KEY:-}'}",
     "TOLLWAY_TEST_UNSET_KEY is empty or unset"),
    # a cloud host and no api_key line at all
    ("{kind: anthropic}", "set providers.openai.api_key"),
])
async def test_a_provider_without_its_key_warns_and_answers_502_at_once(
        start_gateway, tmp_path, caplog, monkeypatch, provider_yaml, says):
    monkeypatch.delenv("TOLLWAY_TEST_UNSET_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="tollway"):
        running = await start_gateway(keyed_config(tmp_path, provider_yaml))
    lines = [r.getMessage() for r in caplog.records if "api_key" in r.getMessage()]
    assert len(lines) == 1 and "provider 'openai' has no api_key configured" in lines[0] and says in lines[0]
    async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", json=CHAT) as r:
        assert r.status == 502
        err = (await r.json())["error"]
    assert err["code"] == "upstream_no_api_key"
    assert err["message"] == "provider 'openai' has no api_key configured"


async def test_an_empty_env_key_is_refused_before_the_network(start_gateway, tmp_path, mock_upstream, monkeypatch):
    """Even in front of a local server: the YAML asked for a key from the environment."""
    monkeypatch.delenv("TOLLWAY_TEST_UNSET_KEY", raising=False)
    running = await start_gateway(keyed_config(
        tmp_path, f"{{kind: openai, base_url: '{mock_upstream.url}', api_key: '${{TOLLWAY_TEST_UNSET_KEY:-}}'}}"))
    async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", json=CHAT) as r:
        assert r.status == 502 and (await r.json())["error"]["code"] == "upstream_no_api_key"


async def test_a_local_server_without_a_key_is_taken_as_is(start_gateway, tmp_path, mock_upstream, caplog):
    with caplog.at_level(logging.WARNING, logger="tollway"):
        running = await start_gateway(keyed_config(tmp_path, f"{{kind: openai, base_url: '{mock_upstream.url}'}}"))
    assert not [r for r in caplog.records if "api_key" in r.getMessage()]
    async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", json=CHAT) as r:
        assert r.status == 200


def test_check_names_the_provider_and_the_variable(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("providers: {openai: {kind: openai, api_key: '${TOLLWAY_TEST_UNSET_KEY:-}'}}\n"
                   "models: {m: {provider: openai, price: {input: 0, output: 0}}}\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TOLLWAY_TEST_UNSET_KEY"}
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "check", "--config", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0
    assert ("warning: provider 'openai' has no api_key configured (TOLLWAY_TEST_UNSET_KEY is empty or unset)"
            in done.stderr)
