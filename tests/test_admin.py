"""The admin API: its guard, each route, and bad input that changes nothing."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from business import ADMIN, DEMO, admin, bearer, biz_config, chat, credits


async def snapshot(s, running) -> list:
    status, body = await admin(s, running, "GET", "/admin/keys")
    assert status == 200
    return body["data"]


async def test_admin_guard(start_gateway):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        async with s.get(running.root + "/admin/keys") as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "missing_admin_key"
        async with s.get(running.root + "/admin/keys", headers=bearer(ADMIN + "x")) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "invalid_admin_key"
        async with s.get(running.root + "/admin/keys", headers=bearer(DEMO)) as r:
            assert r.status == 403
        async with s.get(running.root + "/admin/keys", headers={"X-API-Key": ADMIN}) as r:
            assert r.status == 200


@pytest.mark.parametrize("admin_key", [None, ""])
async def test_empty_admin_key_disables_the_admin_api(start_gateway, admin_key):
    config = biz_config()
    config["server"]["admin_key"] = admin_key
    running = await start_gateway(config)
    async with aiohttp.ClientSession() as s:
        for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/usage")):
            async with s.request(method, running.root + path, headers=bearer(""), json={"name": "x"}) as r:
                assert r.status == 403
                body = await r.json()
                assert body["error"]["code"] == "admin_disabled"
                assert "server.admin_key" in body["error"]["message"]


async def test_create_shows_the_key_once_and_stores_only_its_hash(start_gateway, close_at_end):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        status, made = await admin(s, running, "POST", "/admin/keys", {
            "name": "team a", "credits": 2.5, "models": ["echo"], "limits": {"rpm": 100, "concurrency": 4},
            "expires_at": "2999-12-31T00:00:00Z", "metadata": {"team": "a"}})
        assert status == 201
        plain = made["key"]
        assert plain.startswith("sk-tw-") and len(plain) > 40
        assert plain.startswith(made["prefix"])
        assert made["account"]["balance"] == 2.5 and made["account"]["balance_micro_usd"] == 2_500_000
        assert made["models"] == ["echo"] and made["limits"] == {"rpm": 100, "concurrency": 4}
        assert made["expires_at"] == "2999-12-31T00:00:00Z" and made["metadata"] == {"team": "a"}
        status, shown = await admin(s, running, "GET", f"/admin/keys/{made['id']}")
        assert status == 200 and "key" not in shown and shown["name"] == "team a"
        assert [k["id"] for k in await snapshot(s, running)] == ["cfg_demo", made["id"]]
    client = close_at_end(openai.AsyncOpenAI(base_url=running.url, api_key=plain))
    assert (await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a"}])).id
    rows = await running.gw.store.fetchall("select * from tollway_keys")
    assert rows and not any(plain in str(v) for row in rows for v in row)


async def test_unknown_key_id_is_404(start_gateway):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        for method, path, body in (("GET", "/admin/keys/key_nope", None), ("PATCH", "/admin/keys/key_nope", {}),
                                   ("DELETE", "/admin/keys/key_nope", None),
                                   ("POST", "/admin/keys/key_nope/credits", {"amount": 1})):
            status, answer = await admin(s, running, method, path, body)
            assert status == 404 and answer["error"]["code"] == "key_not_found"


async def test_config_keys_are_read_only_but_can_be_topped_up(start_gateway):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        status, body = await admin(s, running, "PATCH", "/admin/keys/cfg_demo", {"disabled": True})
        assert status == 409 and "config file" in body["error"]["message"]
        assert (await admin(s, running, "DELETE", "/admin/keys/cfg_demo"))[0] == 409
        status, body = await admin(s, running, "POST", "/admin/keys/cfg_demo/credits", {"amount": 0.25})
        assert status == 200 and body["account"]["balance_micro_usd"] == 5_250_000
        assert (await credits(s, running, DEMO))["balance_micro_usd"] == 5_250_000
        assert (await chat(s, running, DEMO))[0] == 200


async def test_topup_and_patch(start_gateway):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        _, made = await admin(s, running, "POST", "/admin/keys", {"name": "t"})
        assert made["account"]["balance"] == 0
        status, body = await admin(s, running, "POST", f"/admin/keys/{made['id']}/credits", {"amount": 0.1})
        assert status == 200 and body["added_micro_usd"] == 100_000
        assert body["account"]["balance_micro_usd"] == 100_000
        status, body = await admin(s, running, "PATCH", f"/admin/keys/{made['id']}",
                                   {"name": "renamed", "models": ["echo"], "limits": {"rpm": 5},
                                    "expires_at": None, "metadata": {"x": 1}})
        assert status == 200
        assert (body["name"], body["models"], body["limits"], body["metadata"]) == (
            "renamed", ["echo"], {"rpm": 5}, {"x": 1})
        status, headers, _ = await chat(s, running, made["key"])
        assert status == 200 and headers["x-ratelimit-limit-requests"] == "5"
        status, body = await admin(s, running, "PATCH", f"/admin/keys/{made['id']}", {"models": None})
        assert body["models"] is None


BAD_CREATE = [
    ({"credits": 1}, "name", "name: required"),
    ({"name": "x", "credit": 1}, "credit", "credit: unknown key (did you mean 'credits'?)"),
    ({"name": "x", "credits": -1}, "credits", "credits: must be at least 0"),
    ({"name": "x", "credits": "5"}, "credits", "credits: expected a number"),
    ({"name": "x", "credits": 0.0000001}, "credits", "credits: too many decimal places"),
    ({"name": 5}, "name", "name: expected text"),
    ({"name": "x", "models": "echo"}, "models", "models: expected a list"),
    ({"name": "x", "models": ["echo", "gpt-9"]}, "models[1]", "models[1]: unknown model 'gpt-9'"),
    ({"name": "x", "limits": {"rpm": "many"}}, "limits.rpm", "limits.rpm: expected an integer"),
    ({"name": "x", "limits": {"rpm": -3}}, "limits.rpm", "limits.rpm: must be at least 1"),
    ({"name": "x", "limits": {"rpm": True}}, "limits.rpm", "limits.rpm: expected an integer"),
    ({"name": "x", "limits": {"models": {"nope": {"rpm": 1}}}}, "limits.models.nope", "unknown model"),
    ({"name": "x", "expires_at": "tomorrow"}, "expires_at", "is not an ISO 8601 time"),
    ({"name": "x", "expires_at": "2001-01-01"}, "expires_at", "expires_at: is in the past"),
    # Taken before (NaN even as a future time), after which every list of keys answered 500.
    ({"name": "x", "expires_at": "Infinity"}, "expires_at", "is not a time between 1970-01-01 and 9999-12-31"),
    ({"name": "x", "expires_at": 1e308}, "expires_at", "is not a time between 1970-01-01 and 9999-12-31"),
    ({"name": "x", "expires_at": "NaN"}, "expires_at", "is not a time between 1970-01-01 and 9999-12-31"),
    ({"name": "x", "disabled": "yes"}, "disabled", "disabled: expected true or false"),
    ({"name": "x", "metadata": []}, "metadata", "metadata: expected a mapping"),
    ({"name": "x", "account": "no spaces"}, "account", "account: use 1-64"),
    ({"name": ""}, "name", "name: must be 1-100"),
]


@pytest.mark.parametrize("body,param,message", BAD_CREATE)
async def test_bad_create_is_400_naming_the_field_and_changes_nothing(start_gateway, body, param, message):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        before = await snapshot(s, running)
        status, answer = await admin(s, running, "POST", "/admin/keys", body)
        assert status == 400, answer
        assert answer["error"]["param"] == param
        assert message in answer["error"]["message"]
        assert answer["error"]["type"] == "invalid_request_error"
        assert await snapshot(s, running) == before


@pytest.mark.parametrize("body,param,message", [
    ({"amount": -5}, "amount", "amount: must be greater than 0"),
    ({"amount": 0}, "amount", "amount: must be greater than 0"),
    ({"amount": "5"}, "amount", "amount: expected a number"),
    ({"amount": None}, "amount", "amount: expected a number"),
    ({}, "amount", "amount: required"),
    ({"amount": 1, "note": "x"}, "note", "note: unknown key"),
    ({"amont": 1}, "amont", "did you mean 'amount'?"),
    ({"amount": 1e12}, "amount", "at most"),
])
async def test_bad_topup_is_400_and_changes_nothing(start_gateway, body, param, message):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        status, answer = await admin(s, running, "POST", "/admin/keys/cfg_demo/credits", body)
        assert status == 400 and answer["error"]["param"] == param
        assert message in answer["error"]["message"]
        assert (await credits(s, running, DEMO))["balance_micro_usd"] == 5_000_000
    rows = await running.gw.store.fetchall("select balance_micro_usd from tollway_accounts")
    assert rows == [(5_000_000,)]


@pytest.mark.parametrize("body,param", [
    ({"credits": 5}, "credits"), ({"disabled": None}, "disabled"), ({"models": ["nope"]}, "models[0]"),
    ({"limits": {"tpm": 0}}, "limits.tpm"), ({"name": None}, "name"), ({"key": "sk-mine"}, "key"),
    ({"expires_at": "1999-01-01"}, "expires_at"), ({"expires_at": "Infinity"}, "expires_at"),
])
async def test_bad_patch_is_400_and_changes_nothing(start_gateway, body, param):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        _, made = await admin(s, running, "POST", "/admin/keys", {"name": "t", "limits": {"tpm": 100}})
        before = await snapshot(s, running)
        status, answer = await admin(s, running, "PATCH", f"/admin/keys/{made['id']}", body)
        assert status == 400 and answer["error"]["param"] == param, answer
        assert await snapshot(s, running) == before


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"null"])
async def test_malformed_admin_bodies_are_400(start_gateway, raw):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        for path in ("/admin/keys", "/admin/keys/cfg_demo/credits"):
            async with s.post(running.root + path, data=raw,
                              headers={**bearer(ADMIN), "Content-Type": "application/json"}) as r:
                assert r.status == 400
                assert (await r.json())["error"]["type"] == "invalid_request_error"
        assert len(await snapshot(s, running)) == 1


async def test_shared_account(start_gateway):
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        _, a = await admin(s, running, "POST", "/admin/keys", {"name": "a", "account": "acme", "credits": 1})
        _, b = await admin(s, running, "POST", "/admin/keys", {"name": "b", "account": "acme", "credits": 2})
        assert b["account"]["id"] == "acme" and b["account"]["balance"] == 3
        status, _, body = await chat(s, running, a["key"])
        assert status == 200
        spent = round(body["usage"]["cost"] * 1_000_000)
        assert (await credits(s, running, b["key"]))["balance_micro_usd"] == 3_000_000 - spent


async def test_the_admin_key_is_read_from_headers_only(start_gateway):
    """?api_key= carries client keys, never the admin key: a URL lands in logs."""
    running = await start_gateway(biz_config())
    async with aiohttp.ClientSession() as s:
        for method in ("GET", "POST"):
            async with s.request(method, running.root + "/admin/keys", params={"api_key": ADMIN},
                                 json={"name": "via-query"}) as r:
                assert r.status == 401
                err = (await r.json())["error"]
                assert err["code"] == "missing_admin_key" and "query string" in err["message"]
        assert [k["name"] for k in await snapshot(s, running)] == ["demo"]
