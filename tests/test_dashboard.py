"""The dashboard over plain HTTP (the browser suite drives it in Chromium): sign-in and
sessions, what each kind of session may reach, headers, config checks, the request log."""

from __future__ import annotations

import time

import aiohttp
import pytest
from business import ADMIN, DEMO, biz_config, chat

from plugins.accounts import ACCOUNTS
from proxy.gateway import build_gateway
from proxy.schema import ConfigError


def dash_config(**options) -> dict:
    config = biz_config(ledger={"flush_ms": 20})
    config["plugins"]["enabled"].append("dashboard")
    if options:
        config["plugins"]["dashboard"] = options
    return config


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def sign_in(s: aiohttp.ClientSession, running, key: str) -> aiohttp.ClientResponse:
    async with s.post(running.root + "/dashboard/login", data={"key": key}, allow_redirects=False) as r:
        await r.read()
        return r


async def test_sign_in_sets_a_strict_session_cookie_and_pages_are_locked_down(start_gateway):
    running = await start_gateway(dash_config())
    async with client() as s:
        async with s.get(running.root + "/dashboard/keys", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/dashboard/login?next=")
        async with s.get(running.root + "/dashboard/api/overview") as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "not_signed_in"
        r = await sign_in(s, running, ADMIN)
        assert r.status == 303 and r.headers["Location"] == "/dashboard"
        cookie = r.headers["Set-Cookie"]
        for part in ("HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age=43200"):
            assert part in cookie
        assert "Secure" not in cookie and ADMIN not in cookie
        async with s.get(running.root + "/dashboard") as r:
            assert r.status == 200
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
            assert ADMIN not in await r.text()


async def test_secure_cookie_always_and_bad_options(start_gateway):
    running = await start_gateway(dash_config(secure_cookie="always", session_hours=1))
    async with client() as s:
        r = await sign_in(s, running, ADMIN)
        assert "Secure" in r.headers["Set-Cookie"] and "Max-Age=3600" in r.headers["Set-Cookie"]
    with pytest.raises(ConfigError, match="plugins.dashboard.secure_cookie"):
        build_gateway(dash_config(secure_cookie="sometimes"))
    config = dash_config()
    config["plugins"]["enabled"].remove("ledger")
    del config["plugins"]["ledger"]
    with pytest.raises(ConfigError, match="add 'ledger'"):
        build_gateway(config)


async def test_a_customer_session_ends_when_the_key_is_revoked(start_gateway):
    running = await start_gateway(dash_config())
    async with client() as s, aiohttp.ClientSession() as plain:
        async with plain.post(running.root + "/admin/keys", json={"name": "c", "credits": 1},
                              headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            made = await r.json()
        r = await sign_in(s, running, made["key"])
        assert r.headers["Location"] == "/dashboard/usage"
        async with s.get(running.root + "/dashboard/usage") as r:
            assert r.status == 200 and made["name"] in await r.text()
        async with s.get(running.root + "/dashboard/api/keys") as r:
            assert r.status == 403
        async with plain.delete(running.root + f"/admin/keys/{made['id']}",
                                headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200
        async with s.get(running.root + "/dashboard/usage", allow_redirects=False) as r:
            assert r.status == 303 and "/dashboard/login" in r.headers["Location"]
        r = await sign_in(s, running, made["key"])
        assert r.status == 401


async def test_sign_in_refuses_another_origin_and_open_redirects(start_gateway):
    running = await start_gateway(dash_config())
    async with client() as s:
        async with s.post(running.root + "/dashboard/login", data={"key": ADMIN},
                          headers={"Origin": "http://evil.example"}, allow_redirects=False) as r:
            assert r.status == 403 and "Set-Cookie" not in r.headers
        for target, expected in (("//evil.example/x", "/dashboard"), ("https://evil.example", "/dashboard"),
                                 ("/dashboard/keys", "/dashboard/keys")):
            async with s.post(running.root + "/dashboard/login", params={"next": target}, data={"key": ADMIN},
                              allow_redirects=False) as r:
                assert r.headers["Location"] == expected


async def test_request_log_pages_and_filters(start_gateway):
    running = await start_gateway(dash_config())
    async with client() as s:
        for i in range(55):
            await chat(s, running, DEMO, content=f"n{i}")
        await chat(s, running, DEMO, model="missing")
        await running.gw.services[ACCOUNTS].writer.flush()
        await sign_in(s, running, ADMIN)
        async with s.get(running.root + "/dashboard/log") as r:
            first = await r.text()
        assert first.count("<time ") == 50 and 'id="older"' in first
        older = first.split('id="older" href="')[1].split('"')[0].replace("&amp;", "&")
        async with s.get(running.root + older) as r:
            second = await r.text()
        assert second.count("<time ") == 6 and 'id="older"' not in second
        async with s.get(running.root + "/dashboard/log?status=404") as r:
            assert (await r.text()).count("<time ") == 1
        async with s.get(running.root + "/dashboard/log?status=nope") as r:
            assert "status: give a status like 429" in await r.text()


async def test_the_customer_page_shows_limits_left_and_when_they_refill(start_gateway):
    config = dash_config()
    config["keys"].append({"name": "limited", "key": "sk-test-limited-0001", "credits": 1.0,
                           "limits": {"rpm": 3, "models": {"echo": {"rpd": 10}}}})
    running = await start_gateway(config)
    async with client() as s:
        for _ in range(2):
            assert (await chat(s, running, "sk-test-limited-0001"))[0] == 200
        await sign_in(s, running, "sk-test-limited-0001")
        async with s.get(running.root + "/dashboard/api/usage") as r:
            limits = (await r.json())["limits"]
        by_label = {(x["label"], x["model"]): x for x in limits}
        rpm = by_label[("requests per minute", None)]
        assert (rpm["limit"], rpm["remaining"]) == (3, 1) and 0 < rpm["full_at"] - time.time() <= 40
        assert by_label[("requests per day for echo", "echo")]["remaining"] == 8
        async with s.get(running.root + "/dashboard/usage") as r:
            page = await r.text()
        assert "requests per minute" in page and "<time datetime=" in page


async def test_sessions_and_sign_in_failures_live_in_the_store_not_in_one_process(start_gateway):
    """What a second worker (or a restarted gateway) on the same store sees: the
    session made elsewhere, its sign-out, and the failed sign-ins already counted."""
    first = await start_gateway(dash_config(sign_in_attempts=2, sign_in_window=600))
    async with client() as s:
        assert (await sign_in(s, first, ADMIN)).status == 303
        cookie = s.cookie_jar.filter_cookies(first.server.make_url("/dashboard"))["tollway_session"].value
        for _ in range(2):
            assert (await sign_in(s, first, "sk-wrong-key")).status == 401
        await first.server.close()
        second = await start_gateway(dash_config(sign_in_attempts=2, sign_in_window=600))
        headers = {"Cookie": f"tollway_session={cookie}"}
        async with aiohttp.ClientSession() as other:
            async with other.get(second.root + "/dashboard/api/overview", headers=headers) as r:
                assert r.status == 200, "a session made on one process is known to another"
            async with other.post(second.root + "/dashboard/login", data={"key": ADMIN},
                                  allow_redirects=False) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) > 0
    (csrf,) = await second.gw.store.fetchone("select csrf from dashboard_sessions")
    async with aiohttp.ClientSession() as other:
        async with other.post(second.root + "/dashboard/logout", headers={**headers, "X-CSRF-Token": csrf},
                              allow_redirects=False) as r:
            assert r.status == 303
        async with other.get(second.root + "/dashboard/api/overview", headers=headers) as r:
            assert r.status == 401, "signed out on one process: the cookie is dead everywhere"
    assert await second.gw.store.fetchall("select digest from dashboard_sessions") == []
