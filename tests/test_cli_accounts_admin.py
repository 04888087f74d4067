"""``tollway accounts ...``: the admin API's /admin/accounts from a shell, on the store,
alone and next to a running server; bad input is one clear line and an exit code."""

from __future__ import annotations

import re

import aiohttp
import orjson
import pytest
from business import admin, bearer, chat
from test_cli_accounts import DEMO_KEY, cli, cli_config, config_file, eventually, run  # noqa: F401

from plugins.accounts import ACCOUNTS


def fields(out: str) -> dict[str, str]:
    """``tollway accounts show``'s lines, name -> value."""
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines() if line.strip())


def test_create_show_budget_limits_refill_topup_suspend_resume(config_file, capsys):  # noqa: F811
    code, out, err = run(capsys, "accounts", "create", "acme", "--config", config_file, "--credits", "10",
                         "--daily", "2", "--rpm", "60", "--tpm", "10000")
    assert (code, err) == (0, "")
    got = fields(out)
    assert (got["balance"], got["budgets"], got["limits"]) == ("10.000000 USD", "daily 2", "rpm 60, tpm 10000")
    assert got["daily spend"].startswith("0.000000 USD of 2.000000 USD, resets ")

    code, out, _ = run(capsys, "accounts", "budget", "acme", "--config", config_file, "--monthly", "100",
                       "--daily", "none")
    assert code == 0 and fields(out)["budgets"] == "monthly 100" and "daily" not in out
    code, out, _ = run(capsys, "accounts", "limits", "acme", "--config", config_file, "--rpd", "500",
                       "--tpm", "none")
    assert code == 0 and fields(out)["limits"] == "rpm 60, rpd 500"
    code, out, _ = run(capsys, "accounts", "refill", "acme", "--config", config_file, "--refill-every", "day",
                       "--refill-amount", "1", "--rollover")
    assert code == 0 and fields(out)["refill"] == "1 every day (rollover)"
    code, out, _ = run(capsys, "accounts", "topup", "acme", "2.5", "--config", config_file)
    # 10 + today's refill grant of 1 (rollover: added to what is left) + 2.5
    assert (code, out.strip()) == (0, "added 2.500000 USD to account acme: balance 13.500000 USD")
    code, out, _ = run(capsys, "accounts", "suspend", "acme", "--config", config_file)
    assert code == 0 and fields(out)["status"] == "suspended"

    code, out, _ = run(capsys, "accounts", "show", "acme", "--json", "--config", config_file)
    doc = orjson.loads(out)
    assert code == 0 and doc["suspended"] is True and doc["balance_micro_usd"] == 13_500_000
    assert (doc["budgets"], doc["limits"]) == ({"monthly": 100.0}, {"rpm": 60, "rpd": 500})
    assert doc["refill"] == {"every": "day", "amount": 1.0, "rollover": True}
    code, out, _ = run(capsys, "accounts", "resume", "acme", "--config", config_file)
    assert code == 0 and fields(out)["status"] == "active"
    code, out, _ = run(capsys, "accounts", "refill", "acme", "--remove", "--config", config_file)
    assert code == 0 and fields(out)["refill"] == "none"

    code, out, _ = run(capsys, "accounts", "list", "--config", config_file)
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "SOURCE", "STATUS", "BALANCE", "(USD)", "SPENT", "BUDGETS", "KEYS"]
    assert lines[2].split()[:4] == ["acme", "api", "active", "13.500000"]
    assert any(line.startswith("cfg_demo ") for line in lines)


@pytest.mark.parametrize("argv,code,message", [
    (("accounts", "create", "bad id"), 2, "tollway accounts create: id: use 1-64 letters, digits"),
    (("accounts", "create", "x", "--credits", "-5"), 2, "tollway accounts create: credits: must be at least 0"),
    (("accounts", "create", "x", "--credits", "lots"), 2, "argument --credits: not an amount: 'lots'"),
    (("accounts", "create", "x", "--refill-every", "month"), 2, "refill: give both --refill-every and"),
    (("accounts", "create", "x", "--rpm", "ten"), 2, "argument --rpm: not a whole number: 'ten'"),
    (("accounts", "create", "cfg_demo"), 1, "tollway accounts create: account 'cfg_demo' exists already"),
    (("accounts", "budget", "cfg_demo", "--daily", "-1"), 2, "budgets.daily: must be at least 0, got -1"),
    (("accounts", "budget", "cfg_demo"), 2, "give at least one of --daily, --weekly, --monthly"),
    (("accounts", "limits", "cfg_demo", "--rpm", "0"), 2, "limits.rpm: must be at least 1, got 0"),
    (("accounts", "topup", "cfg_demo", "0"), 2, "tollway accounts topup: amount: must be greater than 0, got 0"),
    (("accounts", "topup", "cfg_demo", "1e12"), 2, "amount: at most 1000000000 USD at a time"),
    (("accounts", "show", "nobody"), 1, "no account with id 'nobody' (tollway accounts list shows them)"),
    (("accounts", "suspend", "nobody"), 1, "no account with id 'nobody'"),
    (("accounts", "refill", "cfg_demo"), 2, "give --refill-every and --refill-amount, or --remove"),
    (("accounts", "frobnicate"), 2, "invalid choice"),
])
def test_bad_input_is_one_clear_line_and_changes_nothing(config_file, capsys, argv, code, message):  # noqa: F811
    got, out, err = run(capsys, *argv, "--config", config_file)
    assert got == code and message in err and "Traceback" not in err, err
    if not err.startswith("usage:"):
        assert len(err.strip().splitlines()) == 1
    _, out, _ = run(capsys, "accounts", "show", "cfg_demo", "--json", "--config", config_file)
    doc = orjson.loads(out)
    assert (doc["balance_micro_usd"], doc.get("budgets"), doc.get("limits"), doc["suspended"]) == (
        1_000_000, None, None, False)
    _, out, _ = run(capsys, "accounts", "list", "--config", config_file)
    assert len(out.splitlines()) == 3  # header, rule, the demo key's account


def test_an_account_from_the_yaml_is_changed_there(tmp_path, capsys):
    import yaml

    config = cli_config(tmp_path)
    config["accounts"] = {"team": {"credits": 5.0}}
    config["keys"][0]["account"] = "team"
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(config))
    for argv in (("suspend", "team"), ("budget", "team", "--daily", "1"), ("limits", "team", "--rpm", "5")):
        code, _, err = run(capsys, "accounts", *argv, "--config", str(path))
        assert code == 1 and "is defined in the config file's accounts: section; change it there" in err
    code, out, _ = run(capsys, "accounts", "topup", "team", "1", "--config", str(path))
    assert code == 0 and "balance 6.000000 USD" in out


async def test_a_running_server_follows_the_cli_and_the_admin_api_shows_the_same(
        start_gateway, config_file, tmp_path):  # noqa: F811
    running = await start_gateway(cli_config(tmp_path))
    async with aiohttp.ClientSession() as s:
        # Today's spend, more than a short request may cost at most (for the budget below).
        assert (await chat(s, running, DEMO_KEY, content="word " * 400))[0] == 200

        code, _, err = await cli(config_file, "accounts", "suspend", "cfg_demo")
        assert code == 0, err

        async def suspended() -> bool:
            status, _, body = await chat(s, running, DEMO_KEY)
            return status == 402 and body["error"]["code"] == "account_suspended"
        await eventually(suspended)

        code, _, err = await cli(config_file, "accounts", "resume", "cfg_demo")
        assert code == 0, err

        async def served() -> bool:
            return (await chat(s, running, DEMO_KEY))[0] == 200
        await eventually(served)

        # A daily budget of exactly what was spent today: the server counts that spend (from the
        # ledger, when it sees the change) and refuses the next request.
        await running.gw.services[ACCOUNTS].writer.flush()
        spent = running.gw.services[ACCOUNTS].accounts["cfg_demo"].spent
        cap = f"{spent / 1e6:.6f}"
        code, _, err = await cli(config_file, "accounts", "budget", "cfg_demo", "--daily", cap)
        assert code == 0, err

        async def over_budget() -> bool:
            status, _, body = await chat(s, running, DEMO_KEY, max_tokens=1)
            return status == 429 and body["error"]["code"] == "budget_exceeded"
        await eventually(over_budget)

        code, out, err = await cli(config_file, "accounts", "show", "cfg_demo", "--json")
        assert code == 0, err
        from_cli = orjson.loads(out)
        status, from_api = await admin(s, running, "GET", "/admin/accounts/cfg_demo")
        assert status == 200
        for field in ("id", "budgets", "suspended", "keys", "source", "currency"):
            assert from_cli[field] == from_api[field], field
        assert from_api["budgets"] == {"daily": float(cap)}
        assert from_api["budget_status"][0]["spent_micro_usd"] == spent

        code, _, err = await cli(config_file, "accounts", "topup", "cfg_demo", "2")
        assert code == 0, err
        spent = running.gw.services[ACCOUNTS].accounts["cfg_demo"].spent

        async def topped_up() -> bool:
            async with s.get(running.url + "/credits", headers=bearer(DEMO_KEY)) as r:
                return (await r.json())["balance_micro_usd"] == 3_000_000 - spent
        await eventually(topped_up)
