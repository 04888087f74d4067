"""Bring your own key: a key or an account registers its own upstream API key per provider
(admin API, CLI); stored sealed, shown never again, never logged; its requests to that
provider go out with it and are billed at price.byok; an upstream 401 on it is the
customer's to fix, and is said so without echoing it."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import aiohttp
import openai
import pytest
import yaml
from aiohttp import web
from business import ADMIN_HEADERS, DEMO, bearer, biz_config
from test_lifecycle import ROOT

from plugins.accounts import ACCOUNTS
from proxy import ConfigError
from proxy.gateway import build_gateway

SECRET = "a-test-master-secret-of-at-least-32-characters"
OPERATOR = "sk-operator-key-0000000000000"
CUSTOMER = "sk-customer-own-key-1111111111abcd"
REFUSED = "sk-customer-revoked-key-99999wxyz"
OTHER = "sk-test-other-key-0002"


class RecordingUpstream:
    """An OpenAI-compatible upstream that records the key each request came with;
    ``REFUSED`` gets a 401 that echoes part of it, as OpenAI's does."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.limited = False  # the customer's own key answers 429 (its own upstream quota is spent)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.keys.append(key)
        if self.limited and key == CUSTOMER:
            return web.json_response({"error": {"message": "You exceeded your current quota",
                                                "type": "insufficient_quota", "code": "rate_limit_exceeded"}},
                                     status=429, headers={"Retry-After": "1"})
        if key == REFUSED:
            return web.json_response({"error": {"message": f"Incorrect API key provided: {key[:12]}****{key[-4:]}",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}},
                                     status=401)
        body = await request.json()
        usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        if not body.get("stream"):
            return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": body["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": "hi"}}],
                                      "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = '{"id":"s","object":"chat.completion.chunk","created":1,"model":"m",'
        await resp.write(f'data: {base}"choices":[{{"index":0,"delta":{{"content":"hi"}},"finish_reason":"stop"}}]}}'
                         '\n\n'.encode())
        await resp.write(f'data: {base}"choices":[],"usage":{{"prompt_tokens":100,"completion_tokens":10,'
                         '"total_tokens":110}}\n\n'.encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
async def upstream(serve_upstream):
    recorder = RecordingUpstream()
    recorder.url = (await serve_upstream({"POST /v1/chat/completions": recorder.chat})).url
    return recorder


@pytest.fixture(autouse=True)
def master_secret(monkeypatch):
    monkeypatch.setenv("TOLLWAY_BYOK_SECRET", SECRET)


def byok_config(upstream_url: str, byok=0.1, **byok_options) -> dict:
    config = biz_config(keys=[{"name": "demo", "key": DEMO, "credits": 5.0, "account": "acme"},
                              {"name": "other", "key": OTHER, "credits": 5.0, "account": "acme"},
                              {"name": "solo", "key": "sk-test-solo-key-0003", "credits": 5.0}])
    config["plugins"]["enabled"].append("byok")
    if byok_options:
        config["plugins"]["byok"] = byok_options
    config["providers"]["up"] = {"kind": "openai", "base_url": upstream_url, "api_key": OPERATOR}
    price = {"input": 1.0, "output": 2.0}
    if byok is not None:
        price["byok"] = byok
    config["models"]["up"] = {"provider": "up", "model": "upstream-model", "price": price}
    return config


async def put_key(s: aiohttp.ClientSession, running, owner: str, provider: str, key: str) -> tuple[int, dict]:
    async with s.put(f"{running.root}/admin/{owner}/upstream_keys/{provider}", json={"api_key": key},
                     headers=ADMIN_HEADERS) as r:
        return r.status, await r.json()


async def db_rows(running, sql: str) -> list[tuple]:
    """Rows from the gateway's store, after the ledger writer has flushed."""
    await running.gw.services[ACCOUNTS].writer.flush()
    return await running.gw.store.fetchall(sql)


async def test_own_key_goes_upstream_billed_at_byok_price_and_is_never_shown_again(
        start_gateway, upstream, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    running = await start_gateway(byok_config(upstream.url))
    async with aiohttp.ClientSession() as s:
        status, stored = await put_key(s, running, "keys/cfg_demo", "up", CUSTOMER)
        assert (status, stored["hint"], stored["provider"]) == (200, "...abcd", "up")
        assert CUSTOMER not in str(stored)
        async with s.get(f"{running.root}/admin/keys/cfg_demo/upstream_keys", headers=ADMIN_HEADERS) as r:
            listed = await r.json()
        assert [k["hint"] for k in listed["data"]] == ["...abcd"] and CUSTOMER not in str(listed)

    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as own, \
            openai.AsyncOpenAI(base_url=running.url, api_key="sk-test-solo-key-0003", max_retries=0) as solo:
        answer = await own.chat.completions.with_raw_response.create(
            model="up", messages=[{"role": "user", "content": "hi"}])
        assert answer.headers["x-tollway-cost"] == "0.000011"  # 110 tokens at price.byok $0.1/1M, rounded up
        stream = await own.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}],
                                                   stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert chunks[-1].usage.cost == pytest.approx(0.000011)
        listed = await solo.chat.completions.with_raw_response.create(
            model="up", messages=[{"role": "user", "content": "hi"}])
        assert listed.headers["x-tollway-cost"] == "0.000120"  # no key of its own: the list price
    assert upstream.keys == [CUSTOMER, CUSTOMER, OPERATOR]

    costs = await db_rows(running, "select key_id, cost_micro_usd from tollway_ledger order by rowid")
    assert costs == [("cfg_demo", 11), ("cfg_demo", 11), ("cfg_solo", 120)]
    balances = dict(await db_rows(running, "select id, balance_micro_usd from tollway_accounts"))
    # The account opens once, with its first key's credits.
    assert balances["acme"] == 5_000_000 - 22 and balances["cfg_solo"] == 5_000_000 - 120
    [(sealed, hint)] = await db_rows(running, "select sealed, hint from tollway_byok")
    assert CUSTOMER not in sealed and hint == "...abcd"
    for path in tmp_path.glob("tollway.db*"):  # the database and its WAL: the key is nowhere in plain text
        assert CUSTOMER.encode() not in path.read_bytes()
    assert CUSTOMER not in caplog.text


async def test_an_accounts_key_serves_every_key_of_it_and_a_keys_own_wins(start_gateway, upstream):
    running = await start_gateway(byok_config(upstream.url))
    async with aiohttp.ClientSession() as s:
        assert (await put_key(s, running, "accounts/acme", "up", CUSTOMER))[0] == 200
        for key in (DEMO, OTHER):
            async with s.post(running.url + "/chat/completions", headers=bearer(key),
                              json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
                assert r.status == 200
        assert (await put_key(s, running, "keys/cfg_other", "up", "sk-other-own-key-22222222")) [0] == 200
        async with s.post(running.url + "/chat/completions", headers=bearer(OTHER),
                          json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status == 200
        async with s.delete(f"{running.root}/admin/accounts/acme/upstream_keys/up", headers=ADMIN_HEADERS) as r:
            assert (r.status, (await r.json())["deleted"]) == (200, True)
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                          json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status == 200
    assert upstream.keys == [CUSTOMER, CUSTOMER, "sk-other-own-key-22222222", OPERATOR]


async def test_an_upstream_401_on_the_customers_key_is_theirs_to_fix_and_not_echoed(start_gateway, upstream,
                                                                                     tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    running = await start_gateway(byok_config(upstream.url))
    async with aiohttp.ClientSession() as s:
        assert (await put_key(s, running, "keys/cfg_demo", "up", REFUSED))[0] == 200
    async with openai.AsyncOpenAI(base_url=running.url, api_key=DEMO, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
    error = caught.value.body
    assert caught.value.status_code == 401 and error["code"] == "upstream_key_rejected"
    assert "your own API key for provider 'up'" in error["message"]
    for part in (REFUSED, REFUSED[:12], REFUSED[-4:], "Incorrect API key"):
        assert part not in error["message"]
    for part in (REFUSED, REFUSED[:12], "Incorrect API key"):  # (its hint, ...wxyz, is what may be shown)
        assert part not in caplog.text
    [(status, code, cost)] = await db_rows(running, "select status, error_code, cost_micro_usd from tollway_ledger")
    assert (status, code, cost) == (401, "upstream_key_rejected", 0)


async def test_multiplier_price_and_models_list(start_gateway, upstream):
    running = await start_gateway(byok_config(upstream.url, byok={"multiplier": 0.5}))
    async with aiohttp.ClientSession() as s:
        assert (await put_key(s, running, "keys/cfg_demo", "up", CUSTOMER))[0] == 200
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                          json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert (r.status, r.headers["x-tollway-cost"]) == (200, "0.000060")  # half of 100 x 1 + 10 x 2
        async with s.get(running.url + "/models/up", headers=bearer(DEMO)) as r:
            assert (await r.json())["pricing"]["byok"] == {"multiplier": 0.5}


async def test_unit_prices_follow_the_byok_rate(start_gateway, mock_upstream):
    """Images sent with the customer's own key: ``byok: {multiplier}`` scales the per-image
    price (it was charged the list price, ten times what was held and told); a flat ``byok``
    rate bills their tokens (it was a 500)."""
    config = byok_config(mock_upstream.url)
    for name, byok in (("img", {"multiplier": 0.1}), ("img-flat", 0.5)):
        config["models"][name] = {"provider": "up", "model": "dall-e-3",
                                  "price": {"input": 0, "output": 0, "images": {"1024x1024": 0.04}, "byok": byok}}
    running = await start_gateway(config)
    told = []
    async with aiohttp.ClientSession() as s:
        assert (await put_key(s, running, "keys/cfg_demo", "up", CUSTOMER))[0] == 200
        for model in ("img", "img-flat"):
            async with s.post(running.url + "/images/generations", headers=bearer(DEMO),
                              json={"model": model, "prompt": "a cat", "n": 2, "size": "1024x1024"}) as r:
                assert r.status == 200, await r.text()
                told.append(round(float(r.headers["x-tollway-cost"]) * 1e6))
    assert told[0] == 8_000  # 2 images at $0.04 x 0.1
    rows = await db_rows(running, "select cost_micro_usd, byok from tollway_ledger order by rowid")
    assert rows == [(told[0], 1), (told[1], 1)]
    balances = dict(await db_rows(running, "select id, balance_micro_usd from tollway_accounts"))
    assert balances["acme"] == 5_000_000 - sum(told)


async def test_without_price_byok_the_list_price_is_billed_and_the_ledger_says_byok(start_gateway, upstream):
    """No price.byok: the operator set no BYOK rate, so a request with the caller's own key pays the
    list price (a relay is never free by omission); the ledger row says it went with the own key."""
    running = await start_gateway(byok_config(upstream.url, byok=None))
    async with aiohttp.ClientSession() as s:
        assert (await put_key(s, running, "keys/cfg_demo", "up", CUSTOMER))[0] == 200
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                          json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert (r.status, r.headers["x-tollway-cost"]) == (200, "0.000120")  # 100 x $1 + 10 x $2 per 1M
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                          json={"model": "up", "messages": [{"role": "user", "content": "x"}], "stream": True,
                                "stream_options": {"include_usage": True}}) as r:
            assert r.status == 200 and b'"cost":0.00012' in await r.read()
        async with s.post(running.url + "/chat/completions", headers=bearer("sk-test-solo-key-0003"),
                          json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert (r.status, r.headers["x-tollway-cost"]) == (200, "0.000120")
    assert upstream.keys == [CUSTOMER, CUSTOMER, OPERATOR]
    rows = await db_rows(running, "select key_id, cost_micro_usd, byok from tollway_ledger order by rowid")
    assert rows == [("cfg_demo", 120, 1), ("cfg_demo", 120, 1), ("cfg_solo", 120, 0)]
    balances = dict(await db_rows(running, "select id, balance_micro_usd from tollway_accounts"))
    assert balances["acme"] == 5_000_000 - 240


async def test_rotation_replaces_the_key_removal_falls_back_and_lists_show_only_the_last_four(
        start_gateway, upstream):
    running = await start_gateway(byok_config(upstream.url))
    rotated = "sk-customer-rotated-key-2222222zz99"

    async def ask(s) -> None:
        async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                          json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status == 200

    async with aiohttp.ClientSession() as s:
        status, first = await put_key(s, running, "keys/cfg_demo", "up", CUSTOMER)
        assert (status, first["hint"], first["replaced"], first["replaced_hint"]) == (200, "...abcd", False, None)
        await ask(s)
        status, second = await put_key(s, running, "keys/cfg_demo", "up", rotated)
        assert (status, second["hint"], second["replaced"], second["replaced_hint"]) == (200, "...zz99", True,
                                                                                          "...abcd")
        assert second["created_at"] == first["created_at"] and second["updated_at"] >= first["updated_at"]
        await ask(s)
        async with s.get(f"{running.root}/admin/keys/cfg_demo/upstream_keys", headers=ADMIN_HEADERS) as r:
            listed = (await r.json())["data"]
        assert [(k["provider"], k["hint"]) for k in listed] == [("up", "...zz99")]
        for secret in (CUSTOMER, rotated):
            assert secret[:-4] not in str(listed) and secret[:3] not in str(listed)
        async with s.delete(f"{running.root}/admin/keys/cfg_demo/upstream_keys/up", headers=ADMIN_HEADERS) as r:
            assert r.status == 200
        await ask(s)
        async with s.delete(f"{running.root}/admin/keys/cfg_demo/upstream_keys/up", headers=ADMIN_HEADERS) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (404, "upstream_key_not_found")
    assert upstream.keys == [CUSTOMER, rotated, OPERATOR]
    rows = await db_rows(running, "select cost_micro_usd, byok from tollway_ledger order by rowid")
    assert rows == [(11, 1), (11, 1), (120, 0)]  # price.byok $0.1/1M twice, then the list price


async def test_a_refused_or_rate_limited_own_key_does_not_open_the_providers_breaker(start_gateway, upstream):
    """The customer's key being wrong (401) or out of its own quota (429) says nothing about the
    provider: other customers keep being served."""
    config = byok_config(upstream.url)
    config["routing"] = {"retries": 0, "health": {"window": 30, "min_requests": 2, "error_rate": 0.5,
                                                   "cooldown": 60}}
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        assert (await put_key(s, running, "keys/cfg_demo", "up", REFUSED))[0] == 200
        for _ in range(4):
            async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                              json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
                body = await r.json()
                assert (r.status, body["error"]["code"]) == (401, "upstream_key_rejected")
                assert REFUSED[-8:] not in body["error"]["message"]
        upstream.limited = True  # the customer's own key is out of its upstream quota
        assert (await put_key(s, running, "keys/cfg_demo", "up", CUSTOMER))[0] == 200
        for _ in range(4):
            async with s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                              json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
                assert r.status == 429
        upstream.limited = False
        async with s.post(running.url + "/chat/completions", headers=bearer("sk-test-solo-key-0003"),
                          json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status == 200  # the operator's key: the deployment is not open
    assert upstream.keys[-1] == OPERATOR and upstream.keys.count(REFUSED) == 4


async def test_bad_registrations_are_refused_without_echoing_the_key(start_gateway, upstream):
    running = await start_gateway(byok_config(upstream.url))
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{running.root}/admin/keys/cfg_demo/upstream_keys/up", json={"api_key": CUSTOMER}) as r:
            assert r.status == 401  # the admin key guards it
        for owner, provider, key, status, code in (
                ("keys/cfg_demo", "up", "sk-has a space-123456", 400, "invalid_upstream_key"),
                ("keys/cfg_demo", "up", "sk-line\r\nX-Evil: 1", 400, "invalid_upstream_key"),
                ("keys/cfg_demo", "nope", CUSTOMER, 404, "provider_not_found"),
                ("keys/cfg_demo", "local", CUSTOMER, 404, "provider_not_found"),
                ("keys/nope", "up", CUSTOMER, 404, "key_not_found"),
                ("accounts/nope", "up", CUSTOMER, 404, "account_not_found")):
            got, body = await put_key(s, running, owner, provider, key)
            assert (got, body["error"]["code"]) == (status, code)
            assert key not in body["error"]["message"]
        async with s.get(f"{running.root}/admin/keys/cfg_demo/upstream_keys", headers=ADMIN_HEADERS) as r:
            assert (await r.json())["data"] == []


async def test_the_master_secret_is_required_and_must_be_the_one_the_keys_were_sealed_with(
        start_gateway, upstream, tmp_path, monkeypatch):
    monkeypatch.delenv("TOLLWAY_BYOK_SECRET")
    with pytest.raises(ConfigError, match=r"plugins.byok.secret_env: \$TOLLWAY_BYOK_SECRET is not set"):
        await start_gateway(byok_config(upstream.url))
    monkeypatch.setenv("TOLLWAY_BYOK_SECRET", SECRET)
    running = await start_gateway(byok_config(upstream.url))
    async with aiohttp.ClientSession() as s:
        assert (await put_key(s, running, "keys/cfg_demo", "up", CUSTOMER))[0] == 200
    monkeypatch.setenv("TOLLWAY_BYOK_SECRET", "another-secret-that-is-also-long-enough-000")
    config = byok_config(upstream.url)
    config["storage"] = {"url": f"sqlite:///{tmp_path}/tollway.db"}
    gw = build_gateway(config, path=tmp_path / "tollway.yaml")
    with pytest.raises(ConfigError, match="sealed with another master secret"):
        await gw.start(serving=False)


async def test_the_cli_sets_lists_and_removes_and_a_running_server_follows(start_gateway, upstream, tmp_path):
    config = byok_config(upstream.url, poll_ms=50)
    config["storage"] = {"url": f"sqlite:///{tmp_path}/tollway.db"}
    path = tmp_path / "tollway.yaml"
    path.write_text(yaml.safe_dump(config))
    running = await start_gateway(config)

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "proxy.cli", "byok", *args, "--config", str(path)], cwd=ROOT,
                              input=stdin, capture_output=True, text=True, timeout=60,
                              env={**__import__("os").environ, "TOLLWAY_BYOK_SECRET": SECRET})

    done = await asyncio.to_thread(cli, "set", "--key", "cfg_demo", "up", stdin=CUSTOMER + "\n")
    assert (done.returncode, done.stdout.strip()) == (0, "stored key cfg_demo's key for up: ...abcd"), done.stderr
    listed = await asyncio.to_thread(cli, "list")
    assert listed.stdout.strip() == "key:cfg_demo\tup\t...abcd" and CUSTOMER not in listed.stdout

    async def ask() -> str:
        async with aiohttp.ClientSession() as s, s.post(running.url + "/chat/completions", headers=bearer(DEMO),
                                                        json={"model": "up", "messages": [{"role": "user",
                                                                                           "content": "x"}]}) as r:
            assert r.status == 200
        return upstream.keys[-1]

    deadline = time.monotonic() + 30
    while await ask() != CUSTOMER:  # the server polls the store's version
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    done = await asyncio.to_thread(cli, "remove", "--key", "cfg_demo", "up")
    assert done.returncode == 0
    while await ask() != OPERATOR:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    bad = await asyncio.to_thread(cli, "set", "--key", "cfg_demo", "nope", stdin=CUSTOMER + "\n")
    assert bad.returncode == 2 and "no provider named 'nope'" in bad.stderr
    # Rotation: a set over a stored key replaces it and says so (hints only).
    assert (await asyncio.to_thread(cli, "set", "--key", "cfg_demo", "up", stdin=CUSTOMER + "\n")).returncode == 0
    done = await asyncio.to_thread(cli, "set", "--key", "cfg_demo", "up", stdin="sk-rotated-own-key-3333333zz99\n")
    assert (done.returncode, done.stdout.strip()) == (0, "replaced key cfg_demo's key for up: ...zz99 (was ...abcd)")
    listed = await asyncio.to_thread(cli, "list", "--key", "cfg_demo")
    assert listed.stdout.strip() == "key:cfg_demo\tup\t...zz99"
    while await ask() != "sk-rotated-own-key-3333333zz99":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("byok", "message"), [
    (-1, "models.up.price.byok: must not be negative"),
    ({"multipler": 0.5}, "models.up.price.byok.multipler: unknown key (did you mean 'multiplier'?)"),
    ({"multiplier": -0.5}, "models.up.price.byok.multiplier: must not be negative"),
])
def test_price_byok_mistakes_name_their_path(byok, message):
    with pytest.raises(ConfigError) as caught:
        build_gateway(byok_config("http://127.0.0.1:9/v1", byok=byok))
    assert str(caught.value) == message


async def test_the_dashboard_request_log_tags_requests_sent_with_the_customer_s_own_key(start_gateway, upstream):
    config = byok_config(upstream.url)
    config["plugins"]["enabled"].append("dashboard")
    running = await start_gateway(config)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        assert (await put_key(s, running, "keys/cfg_demo", "up", CUSTOMER))[0] == 200
        for key in (DEMO, "sk-test-solo-key-0003"):
            async with s.post(running.url + "/chat/completions", headers=bearer(key),
                              json={"model": "up", "messages": [{"role": "user", "content": "x"}]}) as r:
                assert r.status == 200
        await running.gw.services[ACCOUNTS].writer.flush()
        async with s.post(running.root + "/dashboard/login", data={"key": ADMIN_HEADERS["Authorization"][7:]},
                          allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(running.root + "/dashboard/log") as r:
            page = await r.text()
    assert page.count("<time ") == 2 and page.count(">own key</span>") == 1
    assert CUSTOMER not in page
