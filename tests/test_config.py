"""The YAML config: interpolation, and one clear line naming the path of each mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import base_config

from proxy.config import read_yaml
from proxy.gateway import build_gateway, load_gateway
from proxy.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tollway.yaml"
    path.write_text(text)
    return path


def test_env_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("TW_PORT", "9123")
    monkeypatch.setenv("TW_KEY", "sk-from-env")
    monkeypatch.delenv("TW_UNSET", raising=False)
    path = write(tmp_path, """
server: {port: "${TW_PORT}", admin_key: "${TW_UNSET}"}
providers:
  up: {kind: openai, api_key: "${TW_KEY}", base_url: "${TW_BASE:-http://127.0.0.1:1/v1}"}
models:
  m: {provider: up, price: {input: 1, output: 2}}
""")
    gw = load_gateway(path)
    assert gw.config.server.port == 9123  # a number from the environment
    assert gw.config.providers["up"].api_key == "sk-from-env"
    assert gw.config.providers["up"].base_url == "http://127.0.0.1:1/v1"
    assert gw.config.server.admin_key == ""
    assert gw.config.unset_env == ("TW_UNSET",)


def test_shipped_config_is_valid():
    gw = load_gateway(ROOT / "config" / "tollway.yaml")
    assert "echo" in gw.config.models
    assert gw.config.providers[gw.config.models["echo"].provider].kind == "mock"


def broken(**changes) -> dict:
    config = base_config("http://127.0.0.1:1/v1")
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return config


@pytest.mark.parametrize("config, message", [
    (broken(models__up__price={"inptu": 1, "output": 2}),
     "models.up.price.inptu: unknown key (did you mean 'input'?)"),
    (broken(models__up__price=None), "models.up.price: required"),
    (broken(models__up__price={"input": 1}), "models.up.price.output: required"),
    (broken(models__up__price={"input": "cheap", "output": 1}),
     "models.up.price.input: expected a number, got 'cheap'"),
    (broken(models__up__price={"input": -1, "output": 1}), "models.up.price.input: must not be negative"),
    (broken(models__up__provider="opnai"), "models.up.provider: unknown provider 'opnai'"),
    (broken(models__up__fallbacks=["ghost"]), "models.up.fallbacks[0]: unknown model 'ghost'"),
    (broken(server__port="eighty"), "server.port: expected an integer, got 'eighty'"),
    (broken(server__port=True), "server.port: expected an integer, got true"),
    (broken(server__prot=80), "server.prot: unknown key (did you mean 'port'?)"),
    (broken(server__access_log="yaml"), "server.access_log: expected one of 'text', 'json', 'off'"),
    (broken(server__workers=0), "server.workers: must be at least 1"),
    (broken(storage__on_counters_down="locl"),
     "storage.on_counters_down: expected one of 'refuse', 'local', got 'locl' (did you mean 'local'?)"),
    (broken(providers__up__kind="openia"), "providers.up.kind: unknown kind 'openia' (did you mean 'openai'?)"),
    (broken(providers__up__kind=None), "providers.up.kind: required"),
    (broken(providers__up__timeouts={"conect": 1}),
     "providers.up.timeouts.conect: unknown key (did you mean 'connect'?)"),
    (broken(providers__up__max_connections=0), "providers.up.max_connections: must be at least 1"),
    (broken(providers__local__chunk_dealy=1), "providers.local.chunk_dealy: unknown key (did you mean 'chunk_delay'?)"),
    (broken(modles={}), "modles: unknown section (did you mean 'models'?)"),
    (broken(keys=[{"name": "a", "key": "k"}]), "keys: no enabled plugin reads this section"),
    (broken(models=[1, 2]), "models: expected a mapping of model names"),
])
def test_config_mistakes_name_the_path(config, message):
    with pytest.raises(ConfigError) as exc:
        build_gateway(config)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "server:\n  port: [1, 2\nmodels: {}\n")
    with pytest.raises(ConfigError, match=r"tollway.yaml: line \d+ column \d+: invalid YAML"):
        read_yaml(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_yaml(tmp_path / "nope.yaml")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_check_command(tmp_path):
    ok = run_cli("check", "--config", str(ROOT / "config" / "tollway.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert ": ok (" in ok.stdout
    config = broken(models__up__price={"inptu": 1, "output": 2})
    path = write(tmp_path, yaml.safe_dump(config))
    bad = run_cli("check", "--config", str(path))
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("tollway: config error: models.up.price.inptu: unknown key "
                                  "(did you mean 'input'?)")


def test_serve_refuses_a_bad_config_with_one_line(tmp_path):
    path = write(tmp_path, "providers: {x: {kind: nope}}\n")
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "providers.x.kind: unknown kind 'nope'" in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["serve", "--port", "99999"], "port must be between 0 and 65535"),
    (["serve", "--port", "http"], "not a port number"),
    (["serve", "--workers", "0"], "must be at least 1"),
])
def test_bad_cli_flags(args, fragment):
    result = run_cli(*args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_bare_off_in_yaml_means_off(tmp_path):
    path = write(tmp_path, "server: {access_log: off}\n")
    assert load_gateway(path).config.server.access_log == "off"


def test_a_builtin_plugin_that_cannot_load_is_one_line(monkeypatch):
    import proxy.plugins as loading

    monkeypatch.setitem(loading.BUILTINS, "cache", "plugins.no_such_module")
    with pytest.raises(ConfigError, match=r"plugins.enabled\[0\]: the built-in plugin 'cache' cannot be loaded"):
        build_gateway(broken(plugins={"enabled": ["cache"]}))


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path, monkeypatch):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TOLLWAY_ADMIN_KEY"):
        monkeypatch.setenv(var, "set-for-the-test")
    gw = load_gateway(path)
    assert gw.config.models
