"""GET /metrics: scraped before and after real traffic, parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
import yaml
from business import DEMO, biz_config, chat
from prometheus_client.parser import text_string_to_metric_families
from test_lifecycle import Server, config_file, servers  # noqa: F401 (a fixture)

from plugins.accounts import ACCOUNTS

TOKEN = "metrics-token-0123456789"


def metrics_config(**metrics) -> dict:
    config = biz_config()
    config["metrics"] = {"token": TOKEN, **metrics}
    config["keys"].append({"name": "slow", "key": "sk-test-slow-0001", "credits": 5.0, "limits": {"rpm": 1}})
    config["keys"].append({"name": "poor", "key": "sk-test-poor-0001", "credits": 0.000001})
    return config


async def scrape(session: aiohttp.ClientSession, root: str, token: str | None = TOKEN) -> dict:
    """{(sample name, sorted labels): value} of one scrape."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(root + "/metrics", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels) -> float:
    """The sum of every sample called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def delta(after: dict, before: dict, name: str, **labels) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


async def ledger_spend(running) -> int:
    accounts = running.gw.services.get(ACCOUNTS)
    await accounts.writer.flush()
    row = await running.gw.store.fetchone("select coalesce(sum(cost_micro_usd), 0), count(*) from tollway_ledger")
    return row


async def test_scrape_counts_requests_tokens_money_and_refusals(start_gateway):
    running = await start_gateway(metrics_config())
    async with aiohttp.ClientSession() as s:
        before = await scrape(s, running.root)
        async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
            reply = await client.chat.completions.create(model="echo",
                                                         messages=[{"role": "user", "content": "one two"}])
            stream = await client.chat.completions.create(model="echo", stream=True,
                                                          messages=[{"role": "user", "content": "three four five"}],
                                                          stream_options={"include_usage": True})
            chunks = [c async for c in stream]
        assert (await chat(s, running, "sk-test-slow-0001"))[0] == 200
        assert (await chat(s, running, "sk-test-slow-0001"))[0] == 429  # rpm 1
        assert (await chat(s, running, "sk-test-poor-0001"))[0] == 402
        assert (await chat(s, running, "sk-wrong"))[0] == 401
        assert (await chat(s, running, DEMO, model="nope"))[0] == 404
        after = await scrape(s, running.root)

    req = "tollway_requests_total"
    assert delta(after, before, req) == 7
    assert delta(after, before, req, model="echo", provider="local", endpoint="chat", status="200") == 3
    assert delta(after, before, req, status="429") == 1
    assert delta(after, before, req, status="402") == 1
    assert delta(after, before, req, model="", provider="", status="401") == 1
    assert delta(after, before, req, status="404") == 1
    # Three answers with usage, each observed once per token type.
    gen_ai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "local", "gen_ai_request_model": "echo"}
    assert delta(after, before, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **gen_ai) == 3
    assert delta(after, before, "gen_ai_client_token_usage_count", gen_ai_token_type="output", **gen_ai) == 3
    usage = chunks[-1].usage
    assert delta(after, before, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == (
        reply.usage.completion_tokens + usage.completion_tokens + 2)  # the slow key's "hello there"
    assert total(after, "gen_ai_client_token_usage_bucket", gen_ai_token_type="input", le="+Inf") == 3
    assert delta(after, before, "gen_ai_server_time_to_first_token_seconds_count", **gen_ai) == 1
    assert delta(after, before, "gen_ai_server_time_per_output_token_seconds_count", **gen_ai) == 1
    # Duration: every request that reached a model, the refusals labelled with their error.
    assert delta(after, before, "gen_ai_server_request_duration_seconds_count", **gen_ai) == 5
    assert delta(after, before, "gen_ai_server_request_duration_seconds_count", error_type="rate_limit_exceeded") == 1
    assert delta(after, before, "tollway_limit_refusals_total", code="rate_limit_exceeded", scope="key",
                 limit="rpm") == 1
    assert delta(after, before, "tollway_limit_refusals_total", code="insufficient_credits", scope="account",
                 limit="credits") == 1
    # Money: the spend counter is the ledger's sum, to the micro-USD.
    spent, rows = await ledger_spend(running)
    assert rows == 6  # the 401 has no ledger row
    assert spent > 0
    assert total(after, "tollway_spend_micro_usd_total") == spent
    assert total(after, "tollway_ledger_queue_rows") >= 0
    assert ("tollway_upstream_connections", (("provider", "local"), ("state", "in_use"))) in after


async def test_upstream_failures_are_counted_by_provider_and_reason(start_gateway, mock_upstream):
    config = metrics_config()
    config["providers"]["dead"] = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "x",
                                   "timeouts": {"connect": 1}}
    config["models"]["gone"] = {"provider": "dead", "price": {"input": 1, "output": 1}}
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running, DEMO, model="gone"))[0] == 502
        after = await scrape(s, running.root)
    assert total(after, "tollway_upstream_errors_total", provider="dead", reason="unreachable") == 1


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": "Basic " + TOKEN}, 401),
    ({"X-API-Key": TOKEN}, 401),  # header Authorization only
    ({"Authorization": "Bearer " + "admin-secret-123"}, 401),  # the admin key is not the metrics token
])
async def test_metrics_need_their_own_token(start_gateway, headers, status):
    running = await start_gateway(metrics_config())
    async with aiohttp.ClientSession() as s, s.get(running.root + "/metrics", headers=headers) as r:
        assert r.status == status
        body = await r.json()
        assert "metrics token" in body["error"]["message"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
    async with aiohttp.ClientSession() as s, s.get(running.root + f"/metrics?api_key={TOKEN}") as r:
        assert r.status == 401


async def test_an_empty_token_refuses_every_scrape_and_says_what_to_set(start_gateway):
    running = await start_gateway(metrics_config(token=""))
    async with aiohttp.ClientSession() as s, s.get(running.root + "/metrics",
                                                   headers={"Authorization": "Bearer "}) as r:
        assert r.status == 403
        assert "metrics.token" in (await r.json())["error"]["message"]


async def test_disabled_metrics_serve_nothing(start_gateway):
    running = await start_gateway(metrics_config(enabled=False))
    async with aiohttp.ClientSession() as s, s.get(running.root + "/metrics",
                                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 404


async def test_account_credits_are_opt_in(start_gateway, tmp_path):
    running = await start_gateway(metrics_config())
    async with aiohttp.ClientSession() as s:
        assert not [k for k in await scrape(s, running.root) if k[0].startswith("tollway_account_credits")]
    config = metrics_config(account_credits=True)
    config["storage"] = {"url": f"sqlite:///{tmp_path}/second.db"}
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running, DEMO))[0] == 200
        samples = await scrape(s, running.root)
        accounts = running.gw.services.get(ACCOUNTS)
        demo = accounts.account_of(accounts.by_id["cfg_demo"])
        got = total(samples, "tollway_account_credits_remaining_micro_usd", account=demo.id)
        assert got == demo.available < 5_000_000


async def test_several_workers_report_every_worker_s_requests(tmp_path, servers):  # noqa: F811
    path = config_file(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["metrics"] = {"token": TOKEN, "flush_seconds": 0.1}
    path.write_text(yaml.safe_dump(config))
    server = Server(path, "--workers", "2")
    servers.append(server)
    await server.wait_ready()
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:
        await asyncio.gather(*(client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"n{i}"}]) for i in range(40)))
    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline:
        # A new connection each time, so the kernel spreads the scrapes over both workers.
        async with aiohttp.ClientSession() as s:
            samples = await scrape(s, server.url)
        seen.append(total(samples, "tollway_requests_total", status="200"))
        if seen[-3:] == [40, 40, 40]:
            break
        await asyncio.sleep(0.1)
    assert seen[-3:] == [40, 40, 40], seen
    code, _, err = server.stop()
    assert code == 0, err


async def test_a_failed_attempt_that_a_fallback_answers_is_counted_once(start_gateway):
    config = metrics_config()
    config["providers"]["dead"] = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "x",
                                   "timeouts": {"connect": 1}}
    config["models"]["shaky"] = {"provider": "dead", "price": {"input": 1, "output": 1}, "fallbacks": ["echo"]}
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await chat(s, running, DEMO, model="shaky")
        assert status == 200
        assert (await chat(s, running, DEMO, model="echo"))[0] == 200
        after = await scrape(s, running.root)
    assert total(after, "tollway_upstream_errors_total", provider="dead", reason="unreachable") == 1
    assert total(after, "tollway_upstream_errors_total") == 1
    assert total(after, "tollway_requests_total", model="echo", status="200") == 2


async def test_a_budget_refusal_is_counted_by_its_scope_and_period(start_gateway):
    config = metrics_config()
    config["models"]["echo"]["price"] = {"input": 0, "output": 250_000}  # $0.25 per output token
    config["keys"].append({"name": "capped", "key": "sk-test-capped-01", "credits": 5.0, "budgets": {"daily": 1.0}})
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running, "sk-test-capped-01", max_tokens=3))[0] == 200
        assert (await chat(s, running, "sk-test-capped-01", max_tokens=3))[0] == 429
        after = await scrape(s, running.root)
    assert total(after, "tollway_limit_refusals_total", code="budget_exceeded", scope="key", limit="daily") == 1


async def test_a_suspended_account_s_402_is_counted_as_a_refusal(start_gateway):
    config = metrics_config()
    config["accounts"] = {"frozen": {"credits": 1.0, "suspended": True}}
    config["keys"].append({"name": "frozen", "key": "sk-test-frozen-01", "credits": 1.0, "account": "frozen"})
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, running, "sk-test-frozen-01")
        assert (status, body["error"]["code"]) == (402, "account_suspended")
        after = await scrape(s, running.root)
    assert total(after, "tollway_limit_refusals_total", code="account_suspended", scope="", limit="") == 1
