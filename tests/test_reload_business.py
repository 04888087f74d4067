"""Hot reload of the business sections through a real `tollway serve`: SIGHUP changes an
account's budget (the YAML `accounts:`), suspends another, moves the alert webhook, switches
the error contract and the billing URL, all for the next request, without a restart; what
stays restart-only is named."""

# ruff: noqa: F811  (the fixtures imported from test_reload and test_alerts are parameters here)
from __future__ import annotations

import hashlib
import hmac
import signal
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import orjson
from business import ADMIN_HEADERS, DEMO, bearer, chat
from test_alerts import receiver  # noqa: F401
from test_reload import held, reload_config, serve, until, write  # noqa: F401

TWO = "sk-test-second-account-02"
SECRET_A, SECRET_B = "whsec-first-0123456789", "whsec-second-0123456789"


def spent_today(tmp_path: Path, account: str) -> int:
    db = sqlite3.connect(tmp_path / "tollway.db")
    try:
        return db.execute("select coalesce(sum(cost_micro_usd), 0) from tollway_ledger where account_id = ?",
                          (account,)).fetchone()[0]
    finally:
        db.close()


def business_config(upstream_url: str, hook_url: str) -> dict:
    config = reload_config(upstream_url, {"input": 1.0, "output": 2.0})
    config["keys"][0]["account"] = "acme"
    config["keys"].append({"name": "two", "key": TWO, "credits": 1.0, "account": "team"})
    config["accounts"] = {"acme": {"credits": 100.0, "budgets": {"daily": 100.0}}, "team": {"credits": 5.0}}
    config["plugins"]["ledger"] = {"flush_ms": 20}
    config["alerts"] = {"webhooks": [{"url": hook_url, "secret": SECRET_A, "events": ["budget"]}],
                        "check_seconds": 0.1, "poll_seconds": 0.1, "key_expiring_days": None}
    return config


async def test_sighup_moves_a_budget_a_suspension_the_webhook_and_the_error_contract_for_the_next_request(
        tmp_path, held, serve, receiver):
    first, first_url = await receiver()
    second, second_url = await receiver(path="/other")
    config = business_config(held.url, first_url)
    server = await serve(config)
    api = SimpleNamespace(url=server.url + "/v1")  # what chat() calls
    async with aiohttp.ClientSession() as s:
        # Spend more than a short request can cost, well under the daily budget of 100.
        assert (await chat(s, api, DEMO, content="word " * 400))[0] == 200
        assert (await chat(s, api, TWO))[0] == 200

        async def written() -> bool:
            return spent_today(tmp_path, "acme") > 0
        await until(written, "the ledger row")
        spent = spent_today(tmp_path, "acme")

        # The new file: acme's daily budget is what it spent today, team is suspended, the
        # budget alert goes to another receiver, errors carry the extra fields and numeric codes.
        config["accounts"]["acme"]["budgets"]["daily"] = spent / 1e6
        config["accounts"]["team"]["suspended"] = True
        config["alerts"]["webhooks"] = [{"url": second_url, "secret": SECRET_B, "events": ["budget"]}]
        config["errors"] = {"extra_fields": True, "numeric_code": True}
        config["billing"] = {"billing_url": "https://example.test/billing"}
        write(server.path, config)
        server.proc.send_signal(signal.SIGHUP)

        async def over_budget() -> bool:
            status, _, body = await chat(s, api, DEMO, max_tokens=1)
            return status == 429 and body["error"]["code"] == 429
        await until(over_budget, "the new budget")
        status, headers, body = await chat(s, api, DEMO, max_tokens=1)
        error = body["error"]
        assert (status, error["reason"], error["limit"]) == (429, "budget_exceeded", spent / 1e6)
        assert error["used"] >= spent / 1e6  # (what asking before the reload took spent more)
        assert error["resetAt"] == headers["X-RateLimit-Reset"]

        status, _, body = await chat(s, api, TWO)
        assert (status, body["error"]["reason"]) == (402, "account_suspended")
        assert body["error"]["message"].endswith("Top up at https://example.test/billing")

        await second.until(1)
        headers, raw = second.got[0]
        expected = "sha256=" + hmac.new(SECRET_B.encode(), raw, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Tollway-Signature"], expected)
        event = orjson.loads(raw)
        assert (event["type"], event["data"]["id"], event["data"]["percent"]) == ("budget", "acme", 100)
        assert first.got == []  # under 50 % before the reload: nothing for the old receiver

        # What stays as it is until a restart is named, and nothing of that file is taken.
        write(server.path, {**config, "billing": {"currency": "EUR"},
                            "accounts": {**config["accounts"], "team": {"credits": 5.0}}})
        async with s.post(server.url + "/admin/reload", headers=ADMIN_HEADERS) as r:
            refused = await r.json()
        assert r.status == 409 and refused["error"]["message"].startswith(
            "restart required: billing.currency: balances and the ledger are stored in USD")
        assert (await chat(s, api, TWO))[0] == 402

        config["metrics"] = {"enabled": True, "token": "metrics-token-0123456789"}
        write(server.path, config)
        async with s.post(server.url + "/admin/reload", headers=ADMIN_HEADERS) as r:
            refused = await r.json()
        assert r.status == 409 and refused["error"]["message"].startswith(
            "restart required: metrics: a new section that turns on its plugin; loading it needs a restart")
    assert server.stop()[0] == 0


async def test_a_new_yaml_account_opens_with_its_credits_and_a_balance_is_never_reset(tmp_path, held, serve,
                                                                                       receiver):
    _, url = await receiver()
    config = business_config(held.url, url)
    server = await serve(config)
    api = SimpleNamespace(url=server.url + "/v1")  # what chat() calls
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, api, DEMO))[0] == 200
        async with s.get(server.url + "/v1/credits", headers=bearer(DEMO)) as r:
            before = (await r.json())["balance_micro_usd"]
        assert before < 100_000_000
        config["accounts"]["acme"]["credits"] = 500.0  # opening credit: only for a new account
        config["accounts"]["fresh"] = {"credits": 3.0, "limits": {"rpm": 1}}
        config["keys"].append({"name": "new", "key": "sk-test-fresh-account-03", "credits": 0, "account": "fresh"})
        write(server.path, config)
        async with s.post(server.url + "/admin/reload", headers=ADMIN_HEADERS) as r:
            assert r.status == 200
            assert {"accounts.acme.credits", "accounts.fresh"} <= set((await r.json())["changed"])
        async with s.get(server.url + "/v1/credits", headers=bearer(DEMO)) as r:
            assert (await r.json())["balance_micro_usd"] == before
        async with s.get(server.url + "/v1/credits", headers=bearer("sk-test-fresh-account-03")) as r:
            assert (await r.json())["balance_micro_usd"] == 3_000_000
        assert (await chat(s, api, "sk-test-fresh-account-03"))[0] == 200
        status, _, body = await chat(s, api, "sk-test-fresh-account-03")
        assert status == 429  # the account's rpm of 1, from the reloaded YAML
    assert server.stop()[0] == 0


async def test_usd_rate_and_timezone_reload_for_the_next_request(tmp_path, held, serve, receiver):
    _, url = await receiver()
    config = business_config(held.url, url)
    config["billing"] = {"currency": "INR", "usd_rate": 80.0, "timezone": "UTC"}
    server = await serve(config)
    ask = {"model": "held", "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(server.url + "/v1/chat/completions", headers=bearer(DEMO), json=ask) as r:
            assert (r.status, r.headers["x-tollway-cost"]) == (200, "0.009600")  # 120 micro-USD x 80
        async with s.get(server.url + "/admin/accounts/acme", headers=ADMIN_HEADERS) as r:
            assert (await r.json())["budget_status"][0]["resets_at_local"].endswith("Z")
        config["billing"] = {"currency": "INR", "usd_rate": 160.0, "timezone": "Asia/Tokyo"}
        write(server.path, config)
        async with s.post(server.url + "/admin/reload", headers=ADMIN_HEADERS) as r:
            assert r.status == 200
            assert set((await r.json())["changed"]) == {"billing.usd_rate", "billing.timezone"}
        async with s.post(server.url + "/v1/chat/completions", headers=bearer(DEMO), json=ask) as r:
            assert (r.status, r.headers["x-tollway-cost"]) == (200, "0.019200")
        async with s.get(server.url + "/admin/accounts/acme", headers=ADMIN_HEADERS) as r:
            status = (await r.json())["budget_status"][0]
        assert status["resets_at_local"].endswith("+09:00")  # the next midnight in Tokyo
        # Today's (Tokyo) spend, read again: both requests, unless Tokyo's midnight fell between them.
        assert status["spent_micro_usd"] in (19200, 9600 + 19200)
    assert server.stop()[0] == 0
