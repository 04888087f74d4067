"""``tollway keys ...`` and ``tollway usage`` on the store, alone and next to a running server."""

from __future__ import annotations

import asyncio
import re
import sys

import aiohttp
import pytest
import yaml
from business import bearer, biz_config, chat

from plugins.accounts import ACCOUNTS
from proxy.cli import main

DEMO_KEY = "sk-cli-demo-00000"


def cli_config(tmp_path) -> dict:
    config = biz_config(keys=[{"name": "demo", "key": DEMO_KEY, "credits": 1.0}], auth={"poll_ms": 20},
                        ledger={"flush_ms": 20})
    config["storage"] = {"url": f"sqlite:///{tmp_path}/tollway.db"}
    return config


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(cli_config(tmp_path)))
    return str(path)


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_keys_create_list_show_topup_revoke(config_file, capsys):
    code, out, _ = run(capsys, "keys", "create", "--config", config_file, "--name", "alice", "--credits", "2.5",
                       "--models", "echo", "--rpm", "30", "--expires", "2999-01-01T00:00:00Z")
    assert code == 0
    key = re.search(r"^key: (sk-tw-\S+)$", out, re.M).group(1)
    kid = re.search(r"^id\s+(key_\w+)$", out, re.M).group(1)
    assert "balance  $2.500000" in out and "limits   rpm 30" in out and "shown once" in out

    code, out, _ = run(capsys, "keys", "list", "--config", config_file)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "PREFIX", "STATUS", "SOURCE", "BALANCE", "SPENT", "MODELS", "LIMITS",
                                "EXPIRES"]
    assert any(line.startswith("cfg_demo ") and "$1.000000" in line for line in lines)
    assert any(line.startswith(kid) and "alice" in line and "active" in line for line in lines)
    assert key not in out

    code, out, _ = run(capsys, "keys", "topup", "--config", config_file, "alice", "0.5")
    assert code == 0 and "balance $3.000000" in out
    code, out, _ = run(capsys, "keys", "show", "--config", config_file, kid)
    assert code == 0 and "balance  $3.000000" in out and "models   echo" in out

    code, out, _ = run(capsys, "keys", "revoke", "--config", config_file, kid)
    assert code == 0 and f"revoked {kid}" in out
    code, out, _ = run(capsys, "keys", "show", "--config", config_file, kid)
    assert "status   revoked" in out


@pytest.mark.parametrize("argv,message", [
    (("keys", "create", "--name", "x", "--credits", "-5"), "must be at least 0"),
    (("keys", "create", "--name", "x", "--credits", "lots"), "not an amount in USD"),
    (("keys", "create", "--name", "x", "--rpm", "0"), "must be at least 1"),
    (("keys", "create", "--credits", "1"), "the following arguments are required: --name"),
    (("keys", "topup", "cfg_demo", "-1"), "must be greater than 0, got -1"),
    (("keys", "topup", "cfg_demo", "0"), "must be greater than 0"),
    (("keys", "frobnicate"), "invalid choice"),
    (("usage", "--since", "yesterday"), "expected a day like"),
])
def test_bad_flags_are_clean_errors(config_file, capsys, argv, message):
    code, out, err = run(capsys, *argv, "--config", config_file)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (("keys", "create", "--name", "x", "--models", "echo,nope"), "models[1]: unknown model 'nope'"),
    (("keys", "create", "--name", "x", "--expires", "2001-01-01"), "expires_at: is in the past"),
])
def test_bad_values_are_clean_errors_and_change_nothing(config_file, capsys, argv, message):
    code, _, err = run(capsys, *argv, "--config", config_file)
    assert code == 2 and message in err
    _, out, _ = run(capsys, "keys", "list", "--config", config_file)
    assert len(out.splitlines()) == 3  # header, rule, the demo key


def test_unknown_key_and_config_keys(config_file, capsys):
    code, _, err = run(capsys, "keys", "show", "--config", config_file, "nobody")
    assert code == 1 and "no key with id or name 'nobody'" in err
    code, _, err = run(capsys, "keys", "revoke", "--config", config_file, "cfg_demo")
    assert code == 1 and "config file" in err


async def cli(config_file: str, *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy.cli", *argv, "--config", config_file,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def eventually(check) -> None:
    """Wait (bounded) for the server to pick up a change made by the CLI."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the running server never saw the CLI's change")


async def test_a_running_server_picks_up_cli_changes(start_gateway, config_file, tmp_path):
    running = await start_gateway(cli_config(tmp_path))
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, DEMO_KEY)
        spent = round(body["usage"]["cost"] * 1e6)

        code, out, err = await cli(config_file, "keys", "topup", "demo", "2")
        assert code == 0, err

        async def topped_up() -> bool:
            async with s.get(running.url + "/credits", headers=bearer(DEMO_KEY)) as r:
                return (await r.json())["balance_micro_usd"] == 3_000_000 - spent
        await eventually(topped_up)

        code, out, err = await cli(config_file, "keys", "create", "--name", "bob", "--credits", "1")
        assert code == 0, err
        key = re.search(r"^key: (\S+)$", out, re.M).group(1)
        kid = re.search(r"^id\s+(\S+)$", out, re.M).group(1)

        async def works() -> bool:
            return (await chat(s, running, key))[0] == 200
        await eventually(works)

        # Spend while the CLI changes things: no balance change may be lost either way.
        assert (await chat(s, running, DEMO_KEY))[0] == 200
        code, _, err = await cli(config_file, "keys", "revoke", kid)
        assert code == 0, err

        async def revoked() -> bool:
            return (await chat(s, running, key))[0] == 401
        await eventually(revoked)

        await running.gw.services[ACCOUNTS].writer.flush()
        code, out, err = await cli(config_file, "usage")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["DAY", "KEY", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "COST"]
        demo_row = next(line.split() for line in lines if " demo " in line)
        assert demo_row[2:4] == ["echo", "2"]
        assert lines[-1].startswith("total")
        code, out, _ = await cli(config_file, "usage", "--key", "bob")
        bob_row = next(line.split() for line in out.splitlines() if " bob " in line)
        assert bob_row[2:5] == ["echo", "1", "0"]
        # The stored balance is exactly what the server holds: top-up + spend, nothing overwritten.
        acc = running.gw.services[ACCOUNTS].accounts["cfg_demo"]
        row = await running.gw.store.fetchone(
            "select balance_micro_usd from tollway_accounts where id = 'cfg_demo'")
        assert row[0] == acc.balance == 3_000_000 - acc.spent


async def test_serve_refuses_several_workers_with_in_memory_state(tmp_path):
    config = cli_config(tmp_path)
    config["server"]["workers"] = 2
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump(config))
    expected = ("tollway: config error: server.workers: 2 workers cannot share the in-memory "
                "balances and rate-limit counters of storage.counters: memory; set storage.counters: "
                "redis://127.0.0.1:6379/0 and storage.url: postgresql://..., or run 1 worker")
    # From the YAML, from the command line, and in `tollway check`: one line, before any worker starts.
    one_worker = tmp_path / "one.yaml"
    one_worker.write_text(yaml.safe_dump({**config, "server": {**config["server"], "workers": 1}}))
    for args in (["serve", "--config", str(path), "--port", "0"],
                 ["serve", "--config", str(one_worker), "--port", "0", "--workers", "2"],
                 ["check", "--config", str(path)]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode == 2, args
        assert err.decode().strip() == expected, args
        assert b"listening" not in out


@pytest.mark.parametrize("argv", [["keys", "list"], ["keys", "show", "demo"], ["usage"]])
def test_commands_say_when_the_config_has_no_auth(tmp_path, capsys, argv):
    config = cli_config(tmp_path)
    config.pop("keys")
    config["plugins"] = {"enabled": []}
    path = tmp_path / "noauth.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = run(capsys, *argv, "--config", str(path))
    assert code == 2
    assert "the auth plugin is not enabled" in err and "Traceback" not in err
